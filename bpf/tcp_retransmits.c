/* Retransmitted segments on the watched ports (tcp:tcp_retransmit_skb).
 * Metrics: tcp_retransmits.yaml. */
#include "histogram.h"
#include "ports.h"

TRACEPOINT_PROBE(tcp, tcp_retransmit_skb)
{
    /* sport/dport are host order in this tracepoint */
    u16 port = watched_port(args->sport, args->dport);
    if (!port)
        return 0;
    struct metric_key k = {.metric = METRIC_tcp_retransmits_total, .port = port};
    metric_add(&k, 1);
    return 0;
}
