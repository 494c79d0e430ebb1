"""A dspy.Module exposed with bridge.sdk's ``@program``, for the Elixir client's tests.

Served with ``--expose pb_programs`` (PYTHONPATH pointing at this folder) as
``pb_programs.MultiHop``: its searches are a callback to the caller, each hop
a ``progress`` event.
"""

import dspy

from bridge.sdk import Context, program


@program
class MultiHop(dspy.Module):
    """Answer after searching, each query written from what was found so far."""

    def __init__(self, hops: int = 2):
        super().__init__()
        self.hops = hops
        self.generate_query = dspy.ChainOfThought("context, question -> search_query")
        self.generate_answer = dspy.ChainOfThought("context, question -> answer")

    def forward(self, question: str, ctx: Context | None = None):
        context = []
        for hop in range(self.hops):
            query = self.generate_query(context=context, question=question).search_query
            if ctx:
                context += ctx.callback("search", {"query": query})
                ctx.progress(hop + 1, self.hops)
        return self.generate_answer(context=context, question=question)
