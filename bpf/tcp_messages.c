/* Request/response latency, message sizes, byte counts and socket queueing time
 * on the watched ports, aggregated here in the kernel (metrics: tcp_messages.yaml).
 *
 * A socket alternates between messages in one direction and the other. For the
 * server role a request is what it receives and the response what it sends; for
 * the client role the other way round. Latency = first call of the request ->
 * first call of its response; a message's bytes are observed when the direction
 * turns (or the socket closes).
 */
#include <net/sock.h>
#include <net/tcp_states.h>

#include "histogram.h"
#include "socket_role.h"

#define DIR_SEND 0
#define DIR_RECV 1
#define PHASE_IDLE 0 /* else phase = direction + 1 of the message in flight */

struct sock_state {
    u64 request_start_ns; /* first call of the request in flight, 0 when none */
    u64 message_bytes;    /* bytes of the message in flight */
    u64 queued_since_ns;  /* oldest data_ready not yet read, 0 when none */
    u16 port;
    u8 role;
    u8 phase;
    u32 pad;
};

/* Only sockets on the watched ports have an entry; it goes when the socket closes. */
BPF_HASH(sockets, u64, struct sock_state, 65536);

/* The state of sk if it is on a watched port, created on first sight. */
static __always_inline struct sock_state *watched_socket(struct sock *sk)
{
    u64 key = (u64)sk;
    struct sock_state *st = sockets.lookup(&key);
    if (st)
        return st;
    int read_failed = 0;
    u16 port = 0;
    u8 role = socket_role(sk, &port, &read_failed);
    if (read_failed)
        count_error(ERR_READ_FAILED);
    if (role == ROLE_NONE)
        return 0;
    struct sock_state fresh = {.port = port, .role = role, .phase = PHASE_IDLE};
    if (sockets.insert(&key, &fresh)) {
        count_error(ERR_MAP_FULL);
        return 0;
    }
    return sockets.lookup(&key);
}

static __always_inline void observe_message(struct sock_state *st)
{
    struct metric_key k = {.metric = METRIC_tcp_message_bytes, .port = st->port, .role = st->role,
                           .direction = st->phase - 1};
    hist_observe(&k, st->message_bytes);
}

static __always_inline void on_tcp_call(struct sock_state *st, u32 bytes, u8 dir, u64 now)
{
    struct metric_key k = {.metric = METRIC_tcp_bytes_total, .port = st->port, .role = st->role,
                           .direction = dir};
    metric_add(&k, bytes);

    if (st->phase == dir + 1) {
        st->message_bytes += bytes;
        return;
    }
    if (st->phase != PHASE_IDLE)
        observe_message(st);
    u8 request_dir = st->role == ROLE_SERVER ? DIR_RECV : DIR_SEND;
    if (dir == request_dir) {
        st->request_start_ns = now;
    } else if (st->request_start_ns) {
        struct metric_key lk = {.metric = METRIC_tcp_latency_seconds, .port = st->port, .role = st->role};
        hist_observe(&lk, now - st->request_start_ns);
        st->request_start_ns = 0;
    }
    st->phase = dir + 1;
    st->message_bytes = bytes;
}

static __always_inline int on_tcp_send(void *ctx, struct sock *sk, u32 bytes)
{
    struct sock_state *st = watched_socket(sk);
    if (st)
        on_tcp_call(st, bytes, DIR_SEND, st->phase == DIR_SEND + 1 ? 0 : bpf_ktime_get_ns());
    return 0;
}

static __always_inline int on_tcp_recv(void *ctx, struct sock *sk, u32 bytes)
{
    struct sock_state *st = watched_socket(sk);
    if (!st)
        return 0;
    u64 now = bpf_ktime_get_ns();
#ifdef HAVE_SK_DATA_READY
    if (st->queued_since_ns) {
        struct metric_key qk = {.metric = METRIC_tcp_socket_queue_seconds, .port = st->port};
        hist_observe(&qk, now - st->queued_since_ns);
        st->queued_since_ns = 0;
    }
#endif
    on_tcp_call(st, bytes, DIR_RECV, now);
    return 0;
}

#include "tcp_hooks.h"

#ifdef HAVE_SK_DATA_READY
/* Linux >= 6.6: data (or a FIN) became readable on the socket. */
TRACEPOINT_PROBE(sock, sk_data_ready)
{
    if (args->protocol != IPPROTO_TCP)
        return 0;
    struct sock_state *st = watched_socket((struct sock *)args->skaddr);
    /* keep the oldest unread arrival: queueing is measured from it */
    if (st && !st->queued_since_ns)
        st->queued_since_ns = bpf_ktime_get_ns();
    return 0;
}
#endif

/* A closed socket's state goes; its last message is observed first. */
TRACEPOINT_PROBE(sock, inet_sock_set_state)
{
    if (args->protocol != IPPROTO_TCP || args->newstate != TCP_CLOSE)
        return 0;
    u64 key = (u64)args->skaddr;
    struct sock_state *st = sockets.lookup(&key);
    if (st) {
        if (st->phase != PHASE_IDLE)
            observe_message(st);
        sockets.delete(&key);
    }
    return 0;
}
