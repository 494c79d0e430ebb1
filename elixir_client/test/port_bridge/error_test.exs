defmodule PortBridge.ErrorTest do
  use ExUnit.Case, async: true

  alias PortBridge.{Codec, Error, Retry}

  # The table is protocol/errors.json, the very file the worker loads (read from the
  # copy in priv/, which protocol_files_test.exs holds equal to it byte for byte).
  @table_file Path.expand("../../../protocol/errors.json", __DIR__)

  test "the table is protocol/errors.json, row for row" do
    assert Error.table_path() == Path.expand("../../priv/errors.json", __DIR__)
    raw = Codec.decode!(File.read!(@table_file), :json)

    assert Enum.sort(Enum.map(Error.categories(), &Atom.to_string/1)) ==
             Enum.sort(Map.keys(raw["categories"]))

    for {name, row} <- raw["categories"] do
      ours = Error.table()[String.to_existing_atom(name)]
      assert Atom.to_string(ours.severity) == row["severity"]
      assert Atom.to_string(ours.recovery) == row["recovery"]
      assert ours.retryable == row["retryable"]
      assert Atom.to_string(ours.severity) in raw["severities"]
      assert Atom.to_string(ours.recovery) in Map.keys(raw["recoveries"])
    end
  end

  test "the client's own categories are in the table" do
    for category <- [:communication, :timeout, :overloaded, :initialization, :protocol] do
      assert %Error{category: ^category} = Error.new(category, "x", "y")
    end

    assert_raise ArgumentError, ~r/unknown error category/, fn ->
      Error.new(:no_such_category, "x", "y")
    end
  end

  test "a wire error keeps its category and code; the table fills the rest" do
    wire = %{
      "category" => "lm_rate_limit",
      "code" => "rate_limited",
      "message" => "slow down",
      "severity" => "medium",
      "recovery" => "backoff_retry",
      "retryable" => true,
      "details" => %{"retry_after" => 2}
    }

    assert %Error{
             category: :lm_rate_limit,
             code: "rate_limited",
             recovery: :backoff_retry,
             retryable: true
           } = error = Error.from_wire(wire)

    assert error.details == %{"retry_after" => 2}
    assert Exception.message(error) == "lm_rate_limit/rate_limited: slow down"
  end

  test "a category from a newer worker is kept as a string, with the reply's own recovery" do
    error =
      Error.from_wire(%{
        "category" => "quantum",
        "code" => "decohered",
        "message" => "m",
        "severity" => "high",
        "recovery" => "abandon",
        "retryable" => false
      })

    assert %Error{category: "quantum", recovery: :abandon, retryable: false} = error
  end

  describe "retries follow the recovery field" do
    test "abandon and non-retryable categories are not retried" do
      for category <- [:validation, :not_found, :protocol, :internal, :initialization] do
        assert Retry.delay(Error.new(category, "x", "y"), 1, Retry.options(true)) == :stop
      end
    end

    test "immediate_retry retries at once, backoff_retry and circuit_break back off, within max_attempts" do
      opts = Retry.options(base_ms: 100, max_ms: 1_000, max_attempts: 4)
      assert Retry.delay(Error.new(:output_parse, "x", "y"), 1, opts) == 0

      for category <- [:timeout, :overloaded, :lm_rate_limit, :communication, :lm_unavailable] do
        error = Error.new(category, "x", "y")
        assert Retry.delay(error, 1, opts) in 80..100
        assert Retry.delay(error, 2, opts) in 160..200
        assert Retry.delay(error, 3, opts) in 320..400
        assert Retry.delay(error, 4, opts) == :stop
      end

      assert Retry.delay(
               Error.new(:timeout, "x", "y"),
               9,
               Retry.options(max_attempts: 20, max_ms: 1_000)
             ) in 800..1_000
    end

    test "run/3 stops at success, at a non-retryable error, or after max_attempts" do
      counter = :counters.new(1, [])

      flaky = fn ->
        if :counters.add(counter, 1, 1) == :ok and :counters.get(counter, 1) < 3,
          do: {:error, Error.new(:output_parse, "x", "y")},
          else: {:ok, :done}
      end

      assert Retry.run(flaky, max_attempts: 5) == {:ok, :done}
      assert :counters.get(counter, 1) == 3

      calls = :counters.new(1, [])
      wrong = fn -> :counters.add(calls, 1, 1) && {:error, Error.new(:validation, "x", "y")} end
      assert {:error, %Error{category: :validation}} = Retry.run(wrong, true)
      assert :counters.get(calls, 1) == 1

      parse = fn -> :counters.add(calls, 1, 1) && {:error, Error.new(:output_parse, "x", "y")} end
      assert {:error, %Error{category: :output_parse}} = Retry.run(parse, max_attempts: 3)
      assert :counters.get(calls, 1) == 4

      assert_raise ArgumentError, fn -> Retry.run(parse, attempts: 3) end
    end
  end
end
