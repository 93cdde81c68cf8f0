/* A socket's role on the watched ports, read from struct sock. */
#ifndef INFPROF_SOCKET_ROLE_H
#define INFPROF_SOCKET_ROLE_H

#include <net/sock.h>

#include "ports.h"

#define ROLE_SERVER 0
#define ROLE_CLIENT 1
#define ROLE_NONE 255

/* Role of sk on the watched ports and that port: server when the local port is
 * watched, client when the remote one is. Reads only the head of sock_common,
 * which has been stable for years, so older headers read newer kernels right. */
static __always_inline u8 socket_role(struct sock *sk, u16 *port, int *read_failed)
{
    u16 lport = 0;
    __be16 rport = 0;
    if (bpf_probe_read_kernel(&lport, sizeof(lport), &sk->__sk_common.skc_num) ||
        bpf_probe_read_kernel(&rport, sizeof(rport), &sk->__sk_common.skc_dport)) {
        *read_failed = 1;
        return ROLE_NONE;
    }
    if (port_watched(lport)) {
        *port = lport;
        return ROLE_SERVER;
    }
    u16 r = ntohs(rport);
    if (port_watched(r)) {
        *port = r;
        return ROLE_CLIENT;
    }
    return ROLE_NONE;
}

#endif
