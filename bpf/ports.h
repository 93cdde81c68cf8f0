/* The watched ports, filled from --ebpf-port at load. No kernel headers: cheap to compile. */
#ifndef INFPROF_PORTS_H
#define INFPROF_PORTS_H

/* watched_ports[p] != 0 when port p is watched; an array lookup is cheaper than a hash. */
BPF_ARRAY(watched_ports, u8, 65536);

static __always_inline int port_watched(u16 port)
{
    u32 idx = port;
    u8 *w = watched_ports.lookup(&idx);
    return w && *w;
}

#endif
