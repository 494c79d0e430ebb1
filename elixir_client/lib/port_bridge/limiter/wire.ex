defmodule PortBridge.Limiter.Wire do
  @moduledoc false
  # What a PortBridge.Limiter reads from a worker and writes back (PROTOCOL.md
  # section 7.2), pure: an admission request checked (the worker is untrusted; this
  # runs in the caller, not in the Limiter), an lm_call event read into what the
  # budget needs from it, and an admission with its lease in the protocol's form.

  alias PortBridge.RateLimit

  @max_retry_after_s 600
  @max_model_bytes 512

  # `{:ok, model, limits, estimated_tokens, returned_tokens}` of the args of a
  # portbridge.admit callback (returned_tokens, 1.3: what the worker's earlier calls
  # of the model did not use of their estimates; 0 when absent), or `{:error,
  # message}` for what a worker should never send.
  @spec admission(term) ::
          {:ok, String.t(), RateLimit.limits(), non_neg_integer, non_neg_integer}
          | {:error, String.t()}
  def admission(%{"model" => model, "limits" => limits} = args)
      when is_binary(model) and byte_size(model) in 1..@max_model_bytes do
    with {:ok, limits} <- RateLimit.from_wire(limits),
         {:ok, tokens} <- count(args, "estimated_tokens"),
         {:ok, returned} <- count(args, "returned_tokens") do
      {:ok, model, limits, tokens, returned}
    end
  end

  def admission(args) do
    {:error,
     "an admission request needs \"model\" (a string) and \"limits\", got: " <>
       inspect(args, limit: 5, printable_limit: 100)}
  end

  # What an lm_call event's data means for the budget of its model: a pause (ms)
  # when the provider asked to wait, and the tokens to correct: `{:corrected,
  # delta}` against the event's estimated_tokens (1.3), `{:used, tokens}` to pair
  # with the oldest estimate charged (a 1.2 worker's event), or nil (a cached
  # answer, or nothing to correct). `:ignore` for what it cannot read.
  @spec report(term) ::
          {String.t(), pos_integer | nil, {:corrected, integer} | {:used, non_neg_integer} | nil}
          | :ignore
  def report(%{"model" => model} = data) when is_binary(model) do
    pause =
      case data["error"] do
        %{"retry_after_s" => s} when is_number(s) and s > 0 ->
          round(min(s, @max_retry_after_s) * 1000)

        _ ->
          nil
      end

    tokens = count(data["prompt_tokens"]) + count(data["completion_tokens"])

    correction =
      case data do
        %{"cached" => true} -> nil
        %{"estimated_tokens" => same} when same == tokens -> nil
        %{"estimated_tokens" => e} when is_integer(e) and e >= 0 -> {:corrected, tokens - e}
        _ -> {:used, tokens}
      end

    {model, pause, correction}
  end

  def report(_data), do: :ignore

  defp count(n) when is_integer(n) and n >= 0, do: n
  defp count(_), do: 0

  # An optional token count of an admission request (absent or null: 0).
  defp count(args, key) do
    case Map.get(args, key) do
      n when is_integer(n) and n >= 0 -> {:ok, n}
      nil -> {:ok, 0}
      other -> {:error, "#{key} must be a non-negative integer, got: #{inspect(other, limit: 5)}"}
    end
  end

  # The admission's result: with a lease (Queue.lease/5) when one was granted.
  @spec admitted(map | nil) :: map
  def admitted(nil), do: %{"admitted" => true}

  def admitted(%{starts: starts, valid_us: valid_us, tokens: tokens}) do
    lease = %{"starts" => starts, "valid_ms" => div(valid_us, 1_000)}

    %{
      "admitted" => true,
      "lease" => if(tokens, do: Map.put(lease, "tokens", tokens), else: lease)
    }
  end

  # For telemetry: the outcome of an admission, and the starts it leased.
  @spec result(term) :: :admitted | :timeout | :invalid | :error
  def result({:ok, _}), do: :admitted
  def result({:error, "timeout", _}), do: :timeout
  def result({:error, "validation", _}), do: :invalid
  def result({:error, _, _}), do: :error

  @spec leased(term) :: non_neg_integer
  def leased({:ok, %{"lease" => %{"starts" => starts}}}), do: starts
  def leased(_outcome), do: 0
end
