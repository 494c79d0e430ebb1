defmodule PortBridge.Retry do
  @schema [
    max_attempts: [type: :pos_integer, default: 3, doc: "attempts in all, the first included"],
    base_ms: [type: :pos_integer, default: 100, doc: "the first backoff, in ms"],
    max_ms: [type: :pos_integer, default: 5_000, doc: "the longest backoff, in ms"],
    # Set by PortBridge.request: retries come out of the one budget.
    deadline: [doc: false]
  ]

  @moduledoc """
  Opt-in retries that follow the error table's `recovery` field.

  Pass `retry: true` (or `retry: [max_attempts: 5, base_ms: 50, max_ms: 2_000]`) to
  `PortBridge.request/4` or any `PortBridge.DSPy` call. A failed attempt is retried
  only when its category is `retryable` in `protocol/errors.json`, and how depends on
  its `recovery`:

  | recovery          | what the retry does                                                 |
  |-------------------|---------------------------------------------------------------------|
  | `immediate_retry` | retries at once (`output_parse`, `shutdown`: another worker)        |
  | `backoff_retry`   | waits `base_ms * 2^(n-1)` (capped at `max_ms`, with jitter)         |
  | `circuit_break`   | waits as for backoff, then retries: the next attempt is the probe   |
  | `restart_worker`  | no retry (not retryable); a pool replaces the worker                |
  | `abandon`         | no retry: the request itself is wrong                               |

  A pool sends each attempt through a new checkout, so a `communication` error (the
  worker died) is retried on its replacement. Every attempt and every wait comes
  out of the request's one `:timeout`.

  Options:

  #{PortBridge.Schema.docs(@schema)}
  """

  alias PortBridge.{Error, Schema}

  @defaults Schema.defaults(@schema)

  @doc false
  @spec options(boolean | keyword | nil) :: keyword | nil
  def options(true), do: @defaults
  def options(false), do: nil
  def options(nil), do: nil

  def options(opts) do
    Schema.validate!(opts, @schema, "the :retry option")
    Keyword.merge(@defaults, Enum.reject(opts, &is_nil(elem(&1, 1))))
  end

  @doc """
  Runs `fun` (returning `{:ok, _}` or `{:error, %PortBridge.Error{}}`) up to
  `max_attempts` times. `on_retry` (if given) is called with the error and the
  delay before each new attempt.
  """
  @spec run(
          (() -> {:ok, term} | {:error, Error.t()}),
          keyword | boolean,
          (Error.t(), non_neg_integer -> any) | nil
        ) ::
          {:ok, term} | {:error, Error.t()}
  def run(fun, opts, on_retry \\ nil) do
    case options(opts) do
      nil -> fun.()
      opts -> attempt(fun, opts, on_retry, 1)
    end
  end

  defp attempt(fun, opts, on_retry, n) do
    case fun.() do
      {:error, %Error{} = error} = failure ->
        ms = delay(error, n, opts)

        # The next attempt must start within the request's one deadline.
        if ms == :stop or
             ms >= PortBridge.Request.remaining(Keyword.get(opts, :deadline, :infinity)) do
          failure
        else
          if on_retry, do: on_retry.(error, ms)
          if ms > 0, do: Process.sleep(ms)
          attempt(fun, opts, on_retry, n + 1)
        end

      success ->
        success
    end
  end

  @doc """
  The delay in ms before attempt `n + 1` after `error`, or `:stop` when the error
  must not be retried (or `n` was the last attempt).
  """
  @spec delay(Error.t(), pos_integer, keyword) :: non_neg_integer | :stop
  def delay(%Error{retryable: retryable, recovery: recovery}, n, opts) do
    cond do
      not retryable or n >= opts[:max_attempts] -> :stop
      recovery == :immediate_retry -> 0
      recovery in [:backoff_retry, :circuit_break] -> backoff(n, opts)
      true -> :stop
    end
  end

  defp backoff(n, opts) do
    ms = min(opts[:base_ms] * Integer.pow(2, n - 1), opts[:max_ms])
    # up to 20% jitter, so callers that failed together do not retry together
    ms - :rand.uniform(div(ms, 5) + 1) + 1
  end
end
