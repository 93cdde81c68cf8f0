"""From the wire to the wire: per-turn socket records joined to Triton's trace stages."""
