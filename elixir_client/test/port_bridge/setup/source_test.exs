defmodule PortBridge.Setup.SourceTest do
  use ExUnit.Case, async: true

  alias PortBridge.Setup.Source

  @moduletag :tmp_dir
  @repository Path.expand("../../../..", __DIR__)

  test "this build installs the repository it was compiled from" do
    assert Source.locate() == {:checkout, @repository}
    assert Source.checkout?(@repository)
    refute Source.checkout?(Path.join(@repository, "elixir_client"))
  end

  test "the source is what the wheel is built from: every tree pyproject.toml maps, no bytecode" do
    files = Source.files(@repository)
    assert "pyproject.toml" in files and "README.md" in files
    assert "bridge/__init__.py" in files and "bridge/py.typed" in files
    assert "protocol/errors.json" in files and "protocol/PROTOCOL.md" in files

    refute Enum.any?(files, &(&1 =~ ~r/__pycache__|\.pyc$|egg-info|^tests\/|^elixir_client\//))

    # pyproject.toml's package-dir names the directories of the wheel: each must be copied.
    pyproject = File.read!(Path.join(@repository, "pyproject.toml"))
    [_, mapping] = Regex.run(~r/^package-dir = \{(.*)\}$/m, pyproject)

    for [_, dir] <- Regex.scan(~r/=\s*"([^"]+)"/, mapping),
        do:
          assert(Enum.any?(files, &String.starts_with?(&1, dir <> "/")), "#{dir}/ is not copied")

    assert [_, "README.md"] = Regex.run(~r/^readme = "([^"]+)"/m, pyproject)
  end

  test "sync! makes an exact copy: what differs is written, what is extra removed", %{
    tmp_dir: dir
  } do
    root = Path.join(dir, "root")
    File.mkdir_p!(Path.join(root, "bridge/sub/__pycache__"))
    File.mkdir_p!(Path.join(root, "protocol"))

    File.write!(
      Path.join(root, "pyproject.toml"),
      "[project]\nname = \"portbridge\"\nversion = \"9.9\"\n"
    )

    File.write!(Path.join(root, "bridge/__init__.py"), "A = 1\n")
    File.write!(Path.join(root, "bridge/sub/x.py"), "")
    File.write!(Path.join(root, "bridge/sub/__pycache__/x.cpython-311.pyc"), "junk")
    File.write!(Path.join(root, "protocol/errors.json"), "{}")
    assert Source.checkout?(root)
    assert Source.version(root) == "9.9"

    dest = Path.join(dir, "dest")
    File.mkdir_p!(Path.join(dest, "bridge/gone"))
    File.write!(Path.join(dest, "bridge/gone/old.py"), "")
    File.write!(Path.join(dest, "stale.txt"), "")

    names = Source.sync!(root, dest)
    assert names == ~w(bridge/__init__.py bridge/sub/x.py protocol/errors.json pyproject.toml)
    assert Source.files(dest) == names
    refute File.exists?(Path.join(dest, "bridge/gone"))
    refute File.exists?(Path.join(dest, "stale.txt"))
    assert Source.fingerprint(dest) == Source.fingerprint(root)

    # One byte changes the fingerprint; bytecode does not.
    before = Source.fingerprint(root)
    File.write!(Path.join(root, "bridge/sub/__pycache__/x.cpython-311.pyc"), "other junk")
    assert Source.fingerprint(root) == before
    File.write!(Path.join(root, "bridge/__init__.py"), "A = 2\n")
    refute Source.fingerprint(root) == before
    Source.sync!(root, dest)
    assert File.read!(Path.join(dest, "bridge/__init__.py")) == "A = 2\n"
  end
end
