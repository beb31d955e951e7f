"""The training loop and what it needs below the run: `Trainer` (fit / evaluate with precision,
accumulation, clipping, EMA and the non-finite policies), callbacks, the device and precision
helpers, RNG capture, EMA weights and DDP."""
