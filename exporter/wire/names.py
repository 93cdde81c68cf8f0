"""The names the socket join adds (stages, timeline segments, join results): one place, read
by the trace aggregator, the join, `summary` and the config's stage check."""

WIRE_STAGES = ("socket_wait", "ack_wait", "wire")
WIRE_SEGMENTS = ("socket_wait", "ack_wait")  # the timeline's segments outside end_to_end
JOIN_RESULTS = ("joined", "ambiguous", "no_socket_event", "unsupported")
