"""Model backends behind one interface: `create_model_manager()` then `manager.get(heavy=True)`.

`base.py` is the contract, `generation.py` and `shapes.py` what goes in and comes out, `backends/` one
module per backend, `engines/` the local generation engines; the guide's module paths re-export.
"""
