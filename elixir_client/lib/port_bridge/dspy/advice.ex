defmodule PortBridge.DSPy.Advice do
  @moduledoc false
  # The worker's errors, told in Elixir terms. The worker's messages are neutral
  # (they name commands, never a client's syntax); where one says what to do next,
  # PortBridge.DSPy says it as the Elixir function and options to call. Only the
  # message changes: category and code stay the worker's, and the worker's own words
  # stay in details["worker_message"]. Errors without advice pass unchanged.

  alias PortBridge.Error

  @doc false
  @spec elixir({:ok, term} | {:error, Error.t()}) :: {:ok, term} | {:error, Error.t()}
  def elixir({:error, %Error{code: code, details: details} = error}) when is_map(details) do
    case advice(code, details) do
      nil ->
        {:error, error}

      text ->
        {:error,
         %{error | message: text, details: Map.put(details, "worker_message", error.message)}}
    end
  end

  def elixir(result), do: result

  defp advice("no_lm_configured", _details) do
    ~s{no LM is configured for this session or globally: call PortBridge.DSPy.configure_lm(target, } <>
      ~s{model: "openai/gpt-4o-mini", api_key: key) first (with :session_id it is that session's), } <>
      ~s{or model: "offline" for the built-in deterministic LM (model: "scripted", answers: [...] in tests)}
  end

  defp advice("no_embedder_configured", _details) do
    ~s{no embedder is configured for this session or globally: call PortBridge.DSPy.configure_embedder(} <>
      ~s{target, model: "openai/text-embedding-3-small", api_key: key) first, or model: "offline" } <>
      ~s{for the built-in deterministic embedder}
  end

  defp advice("unknown_program", %{"program_id" => id}) do
    "no program #{inspect(id)} in this scope (programs live in the session that created them, " <>
      "or in the global scope without :session_id): create it with " <>
      "PortBridge.DSPy.create_program/2 or import it with PortBridge.DSPy.import_program/3; " <>
      "PortBridge.DSPy.list_programs/2 lists a scope's programs"
  end

  defp advice("program_exists", %{"program_id" => id}) do
    "a program #{inspect(id)} already exists in this scope: pass replace: true to replace it, " <>
      "or remove it first with PortBridge.DSPy.delete_program/3"
  end

  defp advice("unknown_index", %{"index_id" => id}) do
    "no retrieval index #{inspect(id)} in this scope (or the global one): build it with " <>
      "PortBridge.DSPy.create_index/3; PortBridge.DSPy.list_indexes/2 lists them"
  end

  defp advice("index_exists", %{"index_id" => id}) do
    "an index #{inspect(id)} already exists in this scope: pass replace: true to replace it, " <>
      "or remove it first with PortBridge.DSPy.delete_index/3"
  end

  defp advice("scripted_answers_exhausted", %{"answers" => count}) do
    "the scripted LM has given all #{count} of its answers: call " <>
      ~s{PortBridge.DSPy.configure_lm(target, model: "scripted", answers: [...]) again with the } <>
      "answers the next LM calls need (one per LM call)"
  end

  defp advice(_code, _details), do: nil
end
