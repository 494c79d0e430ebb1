defmodule PortBridge.Setup.Environment do
  @moduledoc false
  # What a virtual environment holds, and whether it serves a plan of
  # PortBridge.Setup: the stamp the setup leaves in it (what it installed, from
  # which source), a probe run by its interpreter (what is really there), and a real
  # worker started from it.

  alias PortBridge.Codec

  @stamp "portbridge-setup.json"

  @doc false
  # {:ok, probe} when the environment holds what the plan asks (nothing to do).
  @spec current(map, String.t()) :: {:ok, map} | :no
  def current(%{force: true}, _python), do: :no

  def current(plan, python) do
    with {:ok, stamp} <- read_stamp(plan.dir),
         true <- Map.delete(stamp, "base_python") == Map.delete(stamp(plan, nil), "base_python"),
         true <- plan.python in [nil, stamp["base_python"]],
         {:ok, probe} <- probe(python, plan),
         true <- complete?(probe, plan) do
      {:ok, probe}
    else
      _ -> :no
    end
  end

  @doc false
  # The Python the environment in `dir` was made from, as the setup was asked (nil:
  # the installer's default, or no stamp).
  @spec base_python(String.t()) :: String.t() | nil
  def base_python(dir) do
    case read_stamp(dir) do
      {:ok, stamp} -> stamp["base_python"]
      :error -> nil
    end
  end

  @doc false
  # Records what the plan installed, once it is checked.
  @spec stamp!(map, String.t() | nil) :: :ok
  def stamp!(plan, base_python) do
    {:ok, json} = Codec.encode(stamp(plan, base_python), :json)
    File.write!(Path.join(plan.dir, @stamp), json)
  end

  defp stamp(plan, base_python) do
    %{
      "portbridge" => plan.version,
      "source" => plan.fingerprint,
      "extras" => plan.extras,
      "python_deps" => plan.python_deps,
      "bytecode" => Atom.to_string(plan.bytecode),
      "base_python" => base_python
    }
  end

  defp read_stamp(dir) do
    with {:ok, text} <- File.read(Path.join(dir, @stamp)),
         {:ok, %{} = stamp} <- Codec.decode(text, :json) do
      {:ok, stamp}
    else
      _ -> :error
    end
  end

  @doc false
  # The probe of a fresh installation; raises unless it holds what the plan asks.
  @spec verify!(map, String.t()) :: map
  def verify!(plan, python) do
    case probe(python, plan) do
      {:ok, probe} ->
        unless complete?(probe, plan) do
          raise PortBridge.SetupError,
                "the installation in #{plan.dir} is incomplete: #{inspect(probe)} " <>
                  "(wanted portbridge #{plan.version})"
        end

        probe

      {:error, reason} ->
        raise PortBridge.SetupError, "#{python} does not run: #{inspect(reason)}"
    end
  end

  # Run by the environment's interpreter: what is installed, as one JSON line.
  @probe ~S"""
  import importlib.metadata as m, importlib.util as u, json, re, sys
  def version(name):
      try:
          return m.version(name)
      except m.PackageNotFoundError:
          return None
  extras = sys.argv[1:]
  requires = (m.requires("portbridge") or []) if version("portbridge") else []
  wanted = [re.match(r"[A-Za-z0-9._-]+", r).group(0) for r in requires
            if any(re.search(r"extra\s*==\s*['\"]%s['\"]" % re.escape(e), r) for e in extras)]
  print(json.dumps({
      "python": "%d.%d.%d" % sys.version_info[:3],
      "supported": sys.version_info[:2] >= (3, 11),
      "portbridge": version("portbridge"),
      "bridge": u.find_spec("bridge") is not None,
      "missing": [name for name in wanted if version(name) is None],
  }))
  """

  defp probe(python, plan) do
    if File.regular?(python) do
      case System.cmd(python, ["-c", @probe | plan.extras], stderr_to_stdout: true) do
        {out, 0} -> Codec.decode(List.last(String.split(out, "\n", trim: true)) || "", :json)
        {out, status} -> {:error, {status, out}}
      end
    else
      {:error, :enoent}
    end
  end

  defp complete?(probe, plan) do
    probe["supported"] == true and probe["bridge"] == true and
      probe["portbridge"] == plan.version and probe["missing"] == []
  end

  @doc false
  @spec describe(map, map) :: String.t()
  def describe(probe, plan) do
    extras = if plan.extras == [], do: "", else: ", with #{Enum.join(plan.extras, ", ")}"
    deps = if plan.python_deps == [], do: "", else: " and #{Enum.join(plan.python_deps, ", ")}"
    "portbridge #{probe["portbridge"]}#{extras}#{deps}, Python #{probe["python"]}"
  end

  # A real worker from the new environment answers ping and, with DSPy, a command
  # that waits for DSPy's import (on the offline LM, in a session of its own): what a
  # first request would meet, found now.
  @doc false
  @spec check_worker!(String.t(), [String.t()]) :: :ok
  def check_worker!(python, extras) do
    {:ok, _} = Application.ensure_all_started(:port_bridge)
    trap = Process.flag(:trap_exit, true)
    # Without the dspy extra, the DSPy backend (registered by the package whatever its
    # extras) would log that it cannot import DSPy.
    backends = if "dspy" in extras, do: [], else: ["--backends", ""]
    {:ok, worker} = PortBridge.Worker.start_link(python: python, worker_args: backends)

    try do
      check_request!(worker, "ping", %{})

      if "dspy" in extras,
        do:
          check_request!(worker, "configure_lm", %{model: "offline"},
            session_id: "port_bridge.setup"
          )

      :ok
    after
      stop(worker)
      Process.flag(:trap_exit, trap)
    end
  end

  defp stop(worker) do
    GenServer.stop(worker)
  catch
    :exit, _already_gone -> :ok
  end

  defp check_request!(worker, command, args, opts \\ []) do
    case PortBridge.request(worker, command, args, [timeout: 120_000] ++ opts) do
      {:ok, _} ->
        :ok

      {:error, error} ->
        raise PortBridge.SetupError,
              "a worker in the new environment failed `#{command}`: #{Exception.message(error)}"
    end
  end
end
