"""Backend adapters: one module per backend kind, all behind `adapters.base.Adapter`."""
