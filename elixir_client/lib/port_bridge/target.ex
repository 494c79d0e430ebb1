defmodule PortBridge.Target do
  @moduledoc """
  What a request can be sent to: a `PortBridge.Worker`, a `PortBridge.Pool` or a
  `PortBridge.Cluster`. Each implements this behaviour; `PortBridge.Call` reaches them
  only through it.

  A pool or cluster registers its name with `{module, config}` in `PortBridge.Registry`
  when it starts (`register/3`); the entry goes with the process that registered it.
  `resolve!/2` turns whatever a caller named into `{module, config}`: a registered
  name to its entry, a pid or any other name to a Worker.
  """

  alias PortBridge.{Call, Error, Request}

  @doc "Sends the call and waits for its final reply, within `call.deadline`."
  @callback call(config :: term, Call.t()) :: {:ok, term} | {:error, Error.t()}

  @doc "Sends the call without waiting for it (see `PortBridge.Request`)."
  @callback async(config :: term, Call.t()) :: Request.t() | {:error, Error.t()}

  @doc "The `:timeout` of a call that gives none."
  @callback default_timeout(config :: term) :: timeout

  @doc """
  Where the target records the state its sessions build (`PortBridge.Journal`), as
  `{journal_module, journal}`, or nil when it records nothing.
  """
  @callback journal(config :: term) :: {module, term} | nil

  @registry PortBridge.Registry

  @doc false
  # Registers the calling process's `name` as a target served by `module` with `config`.
  @spec register(atom, module, term) :: :ok
  def register(name, module, config) do
    {:ok, _} = Registry.register(@registry, name, {module, config})
    :ok
  end

  @doc false
  # The `{module, config}` registered under `name`, or :error.
  @spec lookup(term) :: {:ok, {module, term}} | :error
  def lookup(name) when is_atom(name) do
    case Registry.lookup(@registry, name) do
      [{_pid, {module, config}}] -> {:ok, {module, config}}
      [] -> :error
    end
  end

  def lookup(_name), do: :error

  @doc false
  # The config `module` registered under `name`, or nil (nothing of that kind runs
  # under the name).
  @spec config(module, term) :: term | nil
  def config(module, name) do
    case lookup(name) do
      {:ok, {^module, config}} -> config
      _ -> nil
    end
  end

  @doc false
  # What serves `target`. Raises ArgumentError for a term that names nothing a request
  # could reach (a string, a map, nil...); `where` is the public function that got it.
  @spec resolve!(term, String.t()) :: {module, term}
  def resolve!(target, _where) when is_pid(target), do: {PortBridge.Worker, target}

  def resolve!(target, where) when is_atom(target) do
    if target in [nil, true, false], do: raise(ArgumentError, not_a_target(target, where))

    case lookup(target) do
      {:ok, found} -> found
      :error -> {PortBridge.Worker, target}
    end
  end

  def resolve!({:via, module, _} = target, _where) when is_atom(module),
    do: {PortBridge.Worker, target}

  def resolve!({:global, _} = target, _where), do: {PortBridge.Worker, target}

  def resolve!({name, node} = target, _where) when is_atom(name) and is_atom(node),
    do: {PortBridge.Worker, target}

  def resolve!(target, where), do: raise(ArgumentError, not_a_target(target, where))

  defp not_a_target(target, where) do
    "#{where} got #{inspect(target, limit: 5, printable_limit: 80)} as its target: pass the " <>
      "name of a PortBridge.Pool or PortBridge.Cluster (the :name it was started with), or " <>
      "a PortBridge.Worker's pid or registered name"
  end
end
