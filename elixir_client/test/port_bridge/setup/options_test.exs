defmodule PortBridge.Setup.OptionsTest do
  # Bad options of PortBridge.setup!/1 (and so of the task and the release step) are
  # refused before anything is created or installed. (The real installs are in
  # test/mix/.)
  use ExUnit.Case, async: true

  @moduletag :tmp_dir

  test "a requirement that pip would read as one of its options is refused", %{tmp_dir: dir} do
    for dep <- ["--index-url=https://example.com/simple", " -r other.txt", ""] do
      assert_raise ArgumentError, ~r/python_deps: .* is not a requirement/, fn ->
        PortBridge.setup!(path: dir, python_deps: [dep])
      end
    end

    assert File.ls!(dir) == []
  end

  test "unknown options, values of the wrong type and bad extras name what is wrong", %{
    tmp_dir: dir
  } do
    assert_raise ArgumentError, ~r/unknown option :pyhton_deps .*did you mean :python_deps/, fn ->
      PortBridge.setup!(pyhton_deps: ["numpy"])
    end

    assert_raise ArgumentError,
                 ~r/invalid value for the option :installer .*one of :uv, :pip/,
                 fn ->
                   PortBridge.setup!(installer: :conda)
                 end

    assert_raise ArgumentError, ~r/invalid value for the option :python_deps/, fn ->
      PortBridge.setup!(python_deps: "numpy")
    end

    assert_raise ArgumentError, ~r/extras: "dspy\]" is not the name of an extra/, fn ->
      PortBridge.setup!(path: dir, extras: ["dspy]"])
    end

    assert File.ls!(dir) == []
  end

  test "the options are documented where users read them" do
    {:docs_v1, _, _, _, _, _, docs} = Code.fetch_docs(PortBridge.Setup)
    [doc] = for {{:function, :setup!, 1}, _, _, %{"en" => doc}, _} <- docs, do: doc

    for key <- ~w(path python installer extras python_deps force quiet),
        do: assert(doc =~ "`:#{key}`")
  end
end
