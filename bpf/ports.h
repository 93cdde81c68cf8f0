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

/* The watched one of a connection's two ports (host order), the local one first; 0 when
 * neither is watched (port 0 never is). */
static __always_inline u16 watched_port(u16 local, u16 remote)
{
    if (port_watched(local))
        return local;
    if (port_watched(remote))
        return remote;
    return 0;
}

#endif
