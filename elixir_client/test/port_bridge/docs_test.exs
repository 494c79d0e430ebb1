defmodule PortBridge.DocsTest do
  # The Livebook notebook runs, cell after cell, as Livebook would run it (its setup
  # cell, Mix.install, aside: this build is the package), against the real worker;
  # the cheatsheet's code parses.
  use PortBridge.TestCase, async: true

  @notebook Path.expand("../../notebooks/dspy_native.livemd", __DIR__)
  @cheatsheet Path.expand("../../cheatsheet.cheatmd", __DIR__)
  @external_resource @notebook
  @external_resource @cheatsheet

  defp elixir_blocks(path),
    do: Regex.scan(~r/```elixir\n(.*?)```/s, File.read!(path), capture: :all_but_first)

  describe "the notebook" do
    if reason = skip_reason(:dspy), do: @describetag(skip: reason)

    test "runs cell after cell" do
      cells = for [code] <- elixir_blocks(@notebook), not (code =~ "Mix.install"), do: code
      assert length(cells) >= 8

      binding = [{:python_default, python()}]
      env = Code.env_for_eval([])
      # The notebook reads PORTBRIDGE_PYTHON; the suite always has one to give it.
      cells = [~s{System.put_env("PORTBRIDGE_PYTHON", python_default)} | cells]

      ExUnit.CaptureIO.capture_io(fn ->
        Enum.reduce(cells, {binding, env}, fn cell, acc -> eval_in_turn(cell, acc) end)
      end)
    end
  end

  test "every Elixir block of the cheatsheet parses" do
    blocks = elixir_blocks(@cheatsheet)
    assert length(blocks) > 10

    for [code] <- blocks do
      assert {:ok, _} = Code.string_to_quoted(code), "does not parse:\n#{code}"
    end
  end
end
