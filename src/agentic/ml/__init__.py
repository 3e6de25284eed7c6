"""Model backends behind one interface: `create_model_manager()` then `manager.get(heavy=True)`."""
