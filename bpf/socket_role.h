/* A socket's role on the watched ports, read from struct sock. */
#ifndef INFPROF_SOCKET_ROLE_H
#define INFPROF_SOCKET_ROLE_H

#include <net/sock.h>

#include "metric_key.h"
#include "ports.h"

#define ROLE_NONE 255 /* not on a watched port; never in a metric_key */

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
    *port = watched_port(lport, ntohs(rport));
    if (!*port)
        return ROLE_NONE;
    return *port == lport ? ROLE_SERVER : ROLE_CLIENT;
}

#endif
