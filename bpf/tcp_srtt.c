/* Smoothed round-trip time of connections on the watched ports, sampled at each
 * tcp:tcp_probe (an incoming segment on an established socket). Metrics: tcp_srtt.yaml. */
#include "histogram.h"
#include "ports.h"

TRACEPOINT_PROBE(tcp, tcp_probe)
{
    /* sport/dport are host order in this tracepoint; srtt is in microseconds */
    u16 port = watched_port(args->sport, args->dport);
    if (!port)
        return 0;
    struct metric_key k = {.metric = METRIC_tcp_srtt_seconds, .port = port};
    hist_observe(&k, (u64)args->srtt * 1000);
    return 0;
}
