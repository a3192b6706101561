"""Backend adapters: one module per backend kind, all behind `gateway.backend.Adapter`."""
