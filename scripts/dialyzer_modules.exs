# Prints the .beam files of the modules the beams in EBIN use (the functions they
# call, the remote types of their specs and types, the behaviours they implement):
# what scripts/dialyzer.sh puts in its PLT.  Usage: elixir dialyzer_modules.exs EBIN
[ebin] = System.argv()
beams = Enum.map(Path.wildcard(Path.join(ebin, "*.beam")), &String.to_charlist/1)
own = MapSet.new(beams, &List.to_atom(:filename.basename(&1, ~c".beam")))

defmodule Used do
  def modules(beam) do
    {:ok, {_, [imports: imports, abstract_code: {:raw_abstract_v1, forms}]}} =
      :beam_lib.chunks(beam, [:imports, :abstract_code])

    Enum.map(imports, &elem(&1, 0)) ++ walk(forms, [])
  end

  defp walk({:remote_type, _, [{:atom, _, module}, _name, args]}, acc), do: walk(args, [module | acc])
  defp walk({:attribute, _, :behaviour, module}, acc), do: [module | acc]
  defp walk(tuple, acc) when is_tuple(tuple), do: walk(Tuple.to_list(tuple), acc)
  defp walk(list, acc) when is_list(list), do: Enum.reduce(list, acc, &walk/2)
  defp walk(_other, acc), do: acc
end

used =
  for beam <- beams, module <- Used.modules(beam), not MapSet.member?(own, module), uniq: true,
    do: module

for module <- Enum.sort(used) do
  case :code.which(module) do
    :preloaded -> IO.puts(Path.join(:code.lib_dir(:erts, :ebin), "#{module}.beam"))
    path when is_list(path) -> IO.puts(path)
    _not_here -> :ok
  end
end
