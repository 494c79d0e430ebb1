defmodule PortBridge.ReadmeTest do
  # The README's examples, run as written (against the real worker and DSPy backend).
  use PortBridge.TestCase, async: true

  @readme Path.expand("../../README.md", __DIR__)
  @external_resource @readme

  @blocks Regex.scan(~r/<!-- tested: ([^\n]*?) -->\n```elixir\n(.*?)```/s, File.read!(@readme),
            capture: :all_but_first
          )

  test "the README has its tested examples" do
    assert length(@blocks) == 2
  end

  for {[marker, code], i} <- Enum.with_index(@blocks, 1) do
    @code code
    needs = if marker =~ "NimblePool", do: [:dspy, :nimble_pool], else: [:dspy]
    reasons = needs |> Enum.map(&skip_reason/1) |> Enum.reject(&is_nil/1)
    if reasons != [], do: @tag(skip: Enum.join(reasons, "; "))

    test "README example #{i} runs in a fresh process" do
      # ExUnit's capture_log does not reach IO.puts: keep the example's output off the report.
      ExUnit.CaptureIO.capture_io(fn -> Code.eval_string(@code) end)
    end
  end
end
