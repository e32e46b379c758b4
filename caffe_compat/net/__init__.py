"""Building nets: rule filtering, blob dataflow, naming and the fx graph builder."""
