defmodule PortBridge.LimiterClusterTest do
  # One budget per model across the nodes of a cluster: limiters on this node and
  # on two peers (OTP's :peer), each test in its own :pg group.
  use PortBridge.TestCase, async: true

  import PortBridge.ClusterCase
  alias PortBridge.{AdmitProbe, Limiter}

  if reason = skip_reason(:cluster), do: @moduletag(skip: reason)

  @moduletag timeout: 120_000

  setup_all do
    peers = for _ <- 1..2, do: start_peer("lim")
    on_exit(fn -> Enum.each(peers, fn {peer, _} -> stop_peer(peer) end) end)
    nodes = Enum.map(peers, &elem(&1, 1))
    connect_all([node() | nodes])
    %{peers: nodes}
  end

  # A limiter on this node and on each peer, in a group of this test's own.
  defp start_limiters(peers, opts \\ []) do
    cluster = :"lim_#{System.unique_integer([:positive])}"
    here = AdmitProbe.start(cluster, opts)
    there = for peer <- peers, do: :erpc.call(peer, AdmitProbe, :start, [cluster, opts])
    limiters = [here | there]
    on_exit(fn -> for pid <- limiters, do: stop(pid) end)

    wait_until(fn ->
      length(:pg.get_members(PortBridge.Cluster.scope(), {Limiter, cluster})) == 3
    end)

    limiters
  end

  defp stop(pid) do
    :erpc.call(node(pid), GenServer, :stop, [pid])
  catch
    _, _ -> :ok
  end

  defp args(model, limits), do: %{"model" => model, "limits" => limits, "estimated_tokens" => 0}

  defp admit_on(limiter, args, n) do
    :erpc.call(node(limiter), AdmitProbe, :admit_many, [limiter, args, n])
  end

  defp busiest(times, width) do
    Enum.reduce(times, 0, fn from, best ->
      max(best, Enum.count(times, &(&1 >= from and &1 < from + width)))
    end)
  end

  test "every node sees the same owner of a model, and admits through it", %{peers: peers} do
    limiters = start_limiters(peers)
    a = args("shared", %{"requests_per_minute" => 600_000})
    for limiter <- limiters, do: assert([_] = admit_on(limiter, a, 1))

    owners =
      for limiter <- limiters,
          do: :erpc.call(node(limiter), Limiter, :info, [limiter])["shared"].owner

    assert [owner] = Enum.uniq(owners)
    assert owner in [node() | peers]
  end

  test "calls from every node share one paced budget", %{peers: peers} do
    limiters = start_limiters(peers)
    # 1,200 a minute: 20 a second, one every 50 ms, for 3 x 8 calls at once.
    a = args("paced", %{"requests_per_minute" => 1_200})

    times =
      limiters
      |> Enum.map(fn limiter -> Task.async(fn -> admit_on(limiter, a, 8) end) end)
      |> Task.await_many(60_000)
      |> List.flatten()
      |> Enum.sort()

    assert length(times) == 24
    # Never faster than the limit: 24 starts span at least 23 intervals (the first
    # leases may start after a membership change's hold, which only slows them).
    assert List.last(times) - hd(times) >= 23 * 50_000
    # No more than 20 in any second. A start leased to another node comes at its
    # time plus the lease's delivery (well under one interval on one machine), so
    # one such late start can share a second with the slot after it.
    assert busiest(times, 1_000_000) <= 20 + 1
  end

  test "a node that does not hold the budget leases starts out of its own lease from the owner",
       %{peers: peers} do
    limiters = start_limiters(peers, lease_horizon: 200)
    a = args("leased", %{"requests_per_minute" => 600_000})
    [_] = admit_on(hd(limiters), a, 1)
    owner = :erpc.call(node(hd(limiters)), Limiter, :info, [hd(limiters)])["leased"].owner
    other = Enum.find(limiters, &(node(&1) != owner))
    owner_limiter = Enum.find(limiters, &(node(&1) == owner))
    # A budget born as the members changed holds back leases the previous owner
    # may have granted (lease_horizon, and the second they count in): wait them out.
    wait_until(fn ->
      :erpc.call(owner, Limiter, :info, [owner_limiter])["leased"].reserved == 0
    end)

    # Calls one after the other on that node, a millisecond apart (well under the limit).
    leases =
      for _ <- 1..12 do
        Process.sleep(1)

        {:ok, result} =
          :erpc.call(node(other), Limiter, :admit, [other, a, :infinity, [lease: true]])

        result["lease"]
      end

    # The node holds a lease from the owner and gives its Python a part of it: the
    # owner counts every start it leased (to the node), the node the ones it passed on.
    given = leases |> Enum.reject(&is_nil/1) |> Enum.map(& &1["starts"]) |> Enum.sum()
    assert given > 0
    at_owner = :erpc.call(owner, Limiter, :info, [owner_limiter])["leased"].leased
    at_node = :erpc.call(node(other), Limiter, :info, [other])["leased"].leased
    assert at_node == given and at_owner >= given
  end

  test "a 429 with Retry-After on one node pauses the model on every node", %{peers: peers} do
    [here, there | _] = start_limiters(peers)
    a = args("p", %{"requests_per_minute" => 600_000})
    for limiter <- [here, there], do: [_] = admit_on(limiter, a, 1)

    :ok = Limiter.report(here, %{"model" => "p", "error" => %{"retry_after_s" => 0.5}})

    wait_until(fn ->
      :erpc.call(node(there), Limiter, :info, [there])["p"].paused_until != nil
    end)

    started = System.os_time(:microsecond)
    [admitted] = admit_on(there, a, 1)
    # The pause started on that node when the report reached it, after `started`
    # minus the report's delivery: a wait of most of the half second is left.
    assert admitted - started >= 300_000
  end

  test "when the owner's limiter goes, the others take the budget over", %{peers: peers} do
    limiters = start_limiters(peers, lease_horizon: 200)
    a = args("moving", %{"requests_per_minute" => 600_000})
    for limiter <- limiters, do: [_] = admit_on(limiter, a, 1)
    owner = :erpc.call(node(hd(limiters)), Limiter, :info, [hd(limiters)])["moving"].owner
    {[gone], left} = Enum.split_with(limiters, &(node(&1) == owner))
    stop(gone)

    for limiter <- left do
      assert [_, _] = admit_on(limiter, a, 2)
      new_owner = :erpc.call(node(limiter), Limiter, :info, [limiter])["moving"].owner
      assert new_owner != owner
    end
  end
end
