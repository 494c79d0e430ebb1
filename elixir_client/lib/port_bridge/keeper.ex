defmodule PortBridge.Keeper do
  @moduledoc false
  # The heir of every records table (PortBridge.Records): holds a table whose owner
  # died until an owner that may take it claims it, or for @hold_ms (then the pool is
  # gone for good and its records with it). Started by the :port_bridge application.
  #
  # Who may take a held table: the owner's successor in the same pool instance (its
  # supervisor restarted the owner), or a new pool of the same name started with
  # `adopt_records: true`. Any other new owner starts with a table of its own, so a
  # held table is renamed while it waits (Module.concat(name, Held)): the name is free
  # for the new one. A newer held table of a name replaces an older one.
  #
  # held: name => %{tab, instance, token}

  use GenServer

  @hold_ms 60_000

  @doc false
  @spec start_link(keyword) :: GenServer.on_start()
  def start_link(_opts), do: GenServer.start_link(__MODULE__, :ok, name: __MODULE__)

  @doc false
  # Gives the caller the table held for `name`, renamed back to `name`, when it may take
  # it (same `instance`, or `adopt`): :ok, or :none.
  @spec claim(atom, term, boolean) :: :ok | :none
  def claim(name, instance, adopt) do
    if Process.whereis(__MODULE__),
      do: GenServer.call(__MODULE__, {:claim, name, instance, adopt}),
      else: :none
  end

  @impl true
  def init(:ok), do: {:ok, %{}}

  # The table passes to this process the moment its owner dies; the ETS-TRANSFER
  # message may still be on its way when a successor claims it, so it is looked for
  # here too.
  @impl true
  def handle_call({:claim, name, instance, adopt}, {pid, _}, held) do
    held = take_in(held, name)

    case Map.pop(held, name) do
      {%{tab: tab, instance: held_instance}, rest} when adopt or held_instance == instance ->
        :ets.give_away(:ets.rename(tab, name), pid, name)
        {:reply, :ok, rest}

      _ ->
        {:reply, :none, held}
    end
  end

  @impl true
  def handle_info({:"ETS-TRANSFER", tab, _from, {name, instance}}, held) do
    {:noreply, hold(held, tab, name, instance)}
  end

  def handle_info({:expire, name, token}, held) do
    case held do
      %{^name => %{token: ^token, tab: tab}} ->
        :ets.delete(tab)
        {:noreply, Map.delete(held, name)}

      _ ->
        {:noreply, held}
    end
  end

  def handle_info(_other, held), do: {:noreply, held}

  # The held tables, with those whose transfer message has not been handled yet: any
  # in the mailbox, and a table of `name` this process already owns (ownership passes
  # at the owner's death; its message may still be on its way, and surely comes).
  defp take_in(held, name) do
    receive do
      {:"ETS-TRANSFER", tab, _from, {held_name, instance}} ->
        take_in(hold(held, tab, held_name, instance), name)
    after
      0 ->
        with tab when tab != :undefined <- :ets.whereis(name),
             true <- :ets.info(tab, :owner) == self() do
          receive do
            {:"ETS-TRANSFER", ^name, _from, {^name, instance}} -> hold(held, name, name, instance)
          after
            5_000 -> held
          end
        else
          _ -> held
        end
    end
  end

  # `tab`: the table as ETS names it now (its name, for a named table).
  defp hold(held, tab, name, instance) do
    with %{tab: older} <- held[name], do: :ets.delete(older)
    held_as = :ets.rename(tab, Module.concat(name, Held))
    token = make_ref()
    Process.send_after(self(), {:expire, name, token}, @hold_ms)
    Map.put(held, name, %{tab: held_as, instance: instance, token: token})
  end
end
