defmodule PortBridge.AdmitProbe do
  @moduledoc """
  Admissions made on any node of a test cluster (test modules exist only on the
  test node; this one is on every peer's code path).
  """

  alias PortBridge.Limiter

  @doc """
  Asks `limiter` for `n` admissions at once; returns when each was admitted, as OS
  time in microseconds (one clock for every node on the machine), sorted.
  """
  @spec admit_many(GenServer.server(), map, pos_integer, timeout) :: [integer]
  def admit_many(limiter, args, n, timeout \\ 30_000) do
    deadline = System.monotonic_time(:millisecond) + timeout

    1..n
    |> Enum.map(fn _ ->
      Task.async(fn ->
        {:ok, _} = Limiter.admit(limiter, args, deadline)
        System.os_time(:microsecond)
      end)
    end)
    |> Task.await_many(timeout + 1_000)
    |> Enum.sort()
  end

  @doc "Starts a limiter in `cluster`, not linked to the caller (an :erpc call ends at once)."
  @spec start(atom, keyword) :: pid
  def start(cluster, opts \\ []) do
    {:ok, pid} = GenServer.start(Limiter, [cluster: cluster] ++ opts)
    pid
  end
end
