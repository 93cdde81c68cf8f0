/* One record per TCP send/recv call on the watched ports, to a ring buffer that
 * `inference-profiler tcp-events` prints while it runs. Not on the metrics path. */
#include <net/sock.h>

#include "histogram.h"
#include "socket_role.h"

struct tcp_event {
    u64 ts_ns;
    u32 pid;
    u32 bytes;
    u16 family;
    u16 sport; /* local */
    u16 dport; /* remote */
    u8 direction; /* DIRECTION_SEND or DIRECTION_RECV */
    u8 pad;
    u8 saddr[16];
    u8 daddr[16];
    char comm[TASK_COMM_LEN];
};

BPF_RINGBUF_OUTPUT(events, 64); /* pages */
BPF_ARRAY(dropped, u64, 1);

static __always_inline int emit(struct sock *sk, u32 bytes, u8 direction)
{
    int read_failed = 0;
    u16 port = 0;
    if (socket_role(sk, &port, &read_failed) == ROLE_NONE)
        return 0;
    struct tcp_event *e = events.ringbuf_reserve(sizeof(struct tcp_event));
    if (!e) {
        u32 zero = 0;
        u64 *n = dropped.lookup(&zero);
        if (n)
            __sync_fetch_and_add(n, 1);
        return 0;
    }
    e->ts_ns = bpf_ktime_get_ns();
    e->pid = bpf_get_current_pid_tgid() >> 32;
    e->bytes = bytes;
    e->direction = direction;
    e->pad = 0;
    bpf_get_current_comm(&e->comm, sizeof(e->comm));
    u16 family = 0;
    __be16 dport = 0;
    bpf_probe_read_kernel(&family, sizeof(family), &sk->__sk_common.skc_family);
    bpf_probe_read_kernel(&e->sport, sizeof(e->sport), &sk->__sk_common.skc_num);
    bpf_probe_read_kernel(&dport, sizeof(dport), &sk->__sk_common.skc_dport);
    e->family = family;
    e->dport = ntohs(dport);
    __builtin_memset(e->saddr, 0, sizeof(e->saddr));
    __builtin_memset(e->daddr, 0, sizeof(e->daddr));
    if (family == AF_INET6) {
        bpf_probe_read_kernel(e->saddr, 16, &sk->__sk_common.skc_v6_rcv_saddr);
        bpf_probe_read_kernel(e->daddr, 16, &sk->__sk_common.skc_v6_daddr);
    } else {
        bpf_probe_read_kernel(e->saddr, 4, &sk->__sk_common.skc_rcv_saddr);
        bpf_probe_read_kernel(e->daddr, 4, &sk->__sk_common.skc_daddr);
    }
    events.ringbuf_submit(e, 0);
    return 0;
}

static __always_inline int on_tcp_send(void *ctx, struct sock *sk, u32 bytes)
{
    return emit(sk, bytes, DIRECTION_SEND);
}

static __always_inline int on_tcp_recv(void *ctx, struct sock *sk, u32 bytes)
{
    return emit(sk, bytes, DIRECTION_RECV);
}

#include "tcp_hooks.h"
