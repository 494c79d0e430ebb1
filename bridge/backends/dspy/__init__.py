"""placeholder"""
from bridge.backends import Backend
class _B(Backend):
    name="dspy"
    def register(self, registry): pass
backend=_B()
