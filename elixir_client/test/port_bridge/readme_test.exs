defmodule PortBridge.ReadmeTest do
  # The README's examples, run as written (against the real worker and DSPy backend).
  use PortBridge.TestCase, async: true

  @readme Path.expand("../../README.md", __DIR__)
  @external_resource @readme

  # A block whose marker says "(continues)" runs after the one above it, in the same
  # test (it uses what that one defined).
  @blocks Regex.scan(~r/<!-- tested: ([^\n]*?) -->\n```elixir\n(.*?)```/s, File.read!(@readme),
            capture: :all_but_first
          )
          |> Enum.reduce([], fn
            [marker, code], [[first, before] | rest] ->
              if marker =~ "(continues)",
                do: [[first, before <> code] | rest],
                else: [[marker, code], [first, before] | rest]

            block, [] ->
              [block]
          end)
          |> Enum.reverse()

  test "the README has its tested examples" do
    assert length(@blocks) == 4
  end

  # The top README's "Call your own Python from Elixir": its Python blocks are written as
  # the files their markers name, and each Elixir block runs as written in a fresh BEAM
  # started in that directory (the worker's working directory, where Python finds them).
  @top_readme Path.expand("../../../README.md", __DIR__)
  @external_resource @top_readme
  @top File.read!(@top_readme)
  @python_files Regex.scan(~r/<!-- tested: [^\n]*? as (\w+\.py) -->\n```python\n(.*?)```/s, @top,
                  capture: :all_but_first
                )
  @top_blocks Regex.scan(~r/<!-- tested: elixir_client[^\n]*? -->\n```elixir\n(.*?)```/s, @top,
                capture: :all_but_first
              )

  test "the top README has its examples, the first under 15 lines of Python and 5 of Elixir" do
    assert [["mathcmds.py", python], ["myprogs.py", _]] = @python_files
    assert [[elixir], [_programs]] = @top_blocks
    assert length(String.split(String.trim(python), "\n")) < 15
    assert length(String.split(String.trim(elixir), "\n")) < 5 + 1
  end

  for {[code], i} <- Enum.with_index(@top_blocks, 1) do
    @code code
    # The @program example builds a DSPy program: it needs the DSPy backend.
    if code =~ "DSPy" and skip_reason(:dspy), do: @tag(skip: skip_reason(:dspy))

    test "the top README's Elixir example #{i} runs as written, next to its Python modules" do
      dir =
        Path.join(System.tmp_dir!(), "portbridge-readme-#{System.unique_integer([:positive])}")

      File.mkdir_p!(dir)
      on_exit(fn -> File.rm_rf!(dir) end)
      for [name, code] <- @python_files, do: File.write!(Path.join(dir, name), code)

      paths = Path.wildcard(Path.join(Mix.Project.build_path(), "lib/*/ebin"))
      # The one line of harness: a fresh `elixir -e` does not start applications by itself.
      script = "{:ok, _} = Application.ensure_all_started(:port_bridge)\n" <> @code

      {output, status} =
        System.cmd("elixir", Enum.flat_map(paths, &["-pa", &1]) ++ ["-e", script],
          cd: dir,
          env: [{"PORTBRIDGE_PYTHON", python()}],
          stderr_to_stdout: true
        )

      assert status == 0, output
    end
  end

  for {[marker, code], i} <- Enum.with_index(@blocks, 1) do
    @code code
    needs = if marker =~ "NimblePool", do: [:dspy, :nimble_pool], else: [:dspy]
    reasons = needs |> Enum.map(&skip_reason/1) |> Enum.reject(&is_nil/1)
    if reasons != [], do: @tag(skip: Enum.join(reasons, "; "))

    test "README example #{i} runs in a fresh process" do
      # ExUnit's capture_log does not reach IO.puts: keep the example's output off the report.
      ExUnit.CaptureIO.capture_io(fn -> eval_in_turn(@code) end)
    end
  end
end
