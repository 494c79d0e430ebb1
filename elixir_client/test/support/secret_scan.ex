defmodule PortBridge.SecretScan do
  @moduledoc """
  Where on a node a secret's value can be read: every ETS table this process may
  read, and every process's state (`:sys.get_state/2` where the process answers
  it), dictionary, messages and the other `:erlang.process_info/2` items that hold
  terms. For the tests that prove the client keeps references, not keys.
  """

  @info_items [:dictionary, :messages, :current_stacktrace, :registered_name, :links, :monitors]

  @doc """
  The places holding `needle` (a binary, found inside any binary, charlist, atom or
  function environment), on this node, except the processes in `skip` (the test's
  own, which knows the key).
  """
  @spec holders(binary, [pid]) :: [term]
  def holders(needle, skip \\ []) do
    skip = [self() | skip]
    tables(needle) ++ Enum.flat_map(Process.list() -- skip, &process(&1, needle))
  end

  defp tables(needle) do
    for table <- :ets.all(),
        readable?(table),
        rows = safe(fn -> :ets.tab2list(table) end, []),
        holds?(rows, needle),
        do: {:ets, :ets.info(table, :name)}
  end

  defp readable?(table) do
    case :ets.info(table, :protection) do
      :undefined -> false
      :private -> :ets.info(table, :owner) == self()
      _ -> true
    end
  end

  defp process(pid, needle) do
    info =
      for item <- @info_items,
          {^item, value} <- [safe(fn -> Process.info(pid, item) end, nil)],
          holds?(value, needle),
          do: {:process, pid, item}

    state =
      if otp_process?(pid) and holds?(safe(fn -> :sys.get_state(pid, 200) end, nil), needle),
        do: [{:process, pid, :state}],
        else: []

    info ++ state
  end

  # Only OTP behaviours answer system messages; asking any other process would
  # leave a message in its mailbox and wait in vain. One idle in its behaviour's
  # receive loop answers at once.
  @sys_loops [
    {:gen_server, :loop, 7},
    {:gen_statem, :loop_receive, 3},
    {:gen_event, :fetch_msg, 6}
  ]

  defp otp_process?(pid) do
    case Process.info(pid, :current_function) do
      {:current_function, mfa} -> mfa in @sys_loops
      nil -> false
    end
  end

  defp safe(fun, default) do
    fun.()
  rescue
    _ -> default
  catch
    _, _ -> default
  end

  @doc "True when `term` holds `needle` anywhere."
  @spec holds?(term, binary) :: boolean
  def holds?(term, needle) when is_binary(term), do: :binary.match(term, needle) != :nomatch
  def holds?(term, needle) when is_atom(term), do: holds?(Atom.to_string(term), needle)

  def holds?(term, needle) when is_list(term) do
    (List.ascii_printable?(term) and holds?(List.to_string(term), needle)) or
      Enum.any?(improper_to_list(term), &holds?(&1, needle))
  end

  def holds?(term, needle) when is_tuple(term), do: holds?(Tuple.to_list(term), needle)

  def holds?(term, needle) when is_map(term),
    do: Enum.any?(:maps.to_list(term), fn {k, v} -> holds?(k, needle) or holds?(v, needle) end)

  def holds?(term, needle) when is_function(term) do
    {:env, env} = Function.info(term, :env)
    holds?(env, needle)
  end

  def holds?(_term, _needle), do: false

  defp improper_to_list([head | tail]) when is_list(tail), do: [head | improper_to_list(tail)]
  defp improper_to_list([head | tail]), do: [head, tail]
  defp improper_to_list([]), do: []
end
