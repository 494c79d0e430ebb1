defmodule PortBridge.CommandsTest do
  # `use PortBridge.Commands`: functions generated from a describe snapshot of an
  # exposed Python module (test/support/python/calc.py), called against a real
  # worker; the snapshot written by `mix port_bridge.commands`; a stale snapshot an
  # error, never a wrong call.
  use PortBridge.TestCase, async: true

  alias PortBridge.TestModules.{Py, StalePy}

  @python_dir Path.expand("../support/python", __DIR__)
  @fixture Path.expand("../support/fixtures/commands.json", __DIR__)

  setup_all do
    worker =
      start_supervised!(
        {PortBridge.Worker,
         python: python(),
         worker_args: ["--backends", "", "--expose", "calc", "--quiet-stderr"],
         cd: @python_dir}
      )

    %{worker: worker}
  end

  test "required arguments are parameters, optional ones options", %{worker: w} do
    assert {:ok, 2} = Py.Calc.add(w, 1)
    assert {:ok, 3} = Py.Calc.add(w, 1, b: 2)
    assert 5 = Py.Calc.add!(w, 2, b: 3, timeout: 5_000)
    assert {:ok, %{"value" => 3.0, "label" => "x"}} = Py.Calc.scale(w, 1.5, label: "x")
    # An argument named as a request option goes in args:.
    assert {:ok, 0.5} = Py.Calc.wait(w, 3, args: %{"timeout" => 0.5}, timeout: 5_000)
    assert {:error, %PortBridge.Error{category: :validation}} = Py.Calc.add(w, "one")

    assert_raise ArgumentError,
                 ~r/unknown option :c for PortBridge.TestModules.Py.Calc.add\/3/,
                 fn ->
                   Py.Calc.add(w, 1, c: 2)
                 end
  end

  test "docs and specs come from the schemas" do
    {:docs_v1, _, _, _, _, _, docs} = Code.fetch_docs(Py.Calc)
    [doc] = for {{:function, :add, 3}, _, _, %{"en" => doc}, _} <- docs, do: doc
    assert doc =~ "Add two integers."
    assert doc =~ "`a`" and doc =~ "`:b`" and doc =~ "Default: `1`"

    {:ok, specs} = Code.Typespec.fetch_specs(Py.Calc)
    [{{:add, 3}, [spec]}] = for {{:add, 3}, _} = s <- specs, do: s
    assert Macro.to_string(Code.Typespec.spec_to_quoted(:add, spec)) =~ "integer()"
  end

  test "a snapshot that no longer matches the worker is an error, and no call is made", %{
    worker: w
  } do
    assert {:ok, ^w} = Py.check(w)

    assert {:error, %PortBridge.Error{code: "stale_commands_snapshot", message: message}} =
             StalePy.Calc.add(w, 1, 2)

    assert message =~ "calc.add takes other arguments"
    assert message =~ "mix port_bridge.commands --expose calc"
    assert {:error, %PortBridge.Error{code: "stale_commands_snapshot"}} = StalePy.check(w)
  end

  test "a stubbed target is not compared: it answers as the test says" do
    PortBridge.Test.stub(:calc_stub, fn "calc.add", %{"a" => 1, "c" => 9, "b" => 5} ->
      {:ok, 15}
    end)

    assert {:ok, 15} = StalePy.Calc.add(:calc_stub, 1, 9, b: 5)
  end

  @tag :tmp_dir
  test "mix port_bridge.commands writes the snapshot the functions came from", %{tmp_dir: dir} do
    out = Path.join(dir, "commands.json")

    ExUnit.CaptureIO.capture_io(fn ->
      Mix.Tasks.PortBridge.Commands.run([
        "--expose",
        "calc",
        "--cd",
        @python_dir,
        "--out",
        out,
        "--python",
        python()
      ])
    end)

    assert File.read!(out) == File.read!(@fixture),
           "test/support/fixtures/commands.json is stale: regenerate it with " <>
             "mix port_bridge.commands --expose calc --cd test/support/python --out test/support/fixtures/commands.json"
  end

  test "mistakes in use are compile errors" do
    for {opts, message} <- [
          {~s{expose: ["calc"], snapshot: "test/support/fixtures/none.json"},
           ~r/no commands snapshot .*mix port_bridge.commands --expose calc/},
          {~s{expose: ["text"], snapshot: "test/support/fixtures/commands.json"},
           ~r/has no namespace "text"/}
        ] do
      error =
        assert_raise CompileError, fn ->
          Code.compile_string(
            "defmodule PortBridge.BadPy do\nuse PortBridge.Commands, #{opts}\nend"
          )
        end

      assert Exception.message(error) =~ message
    end
  end
end
