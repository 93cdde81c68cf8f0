/* Where TCP send/recv are seen, one variant per attach method; the loader defines
 * exactly one of ATTACH_TRACEPOINT, ATTACH_FENTRY, ATTACH_KPROBE (see the .yaml).
 * The including program defines, before this header:
 *   static __always_inline int on_tcp_send(void *ctx, struct sock *sk, u32 bytes);
 *   static __always_inline int on_tcp_recv(void *ctx, struct sock *sk, u32 bytes);
 * Each is called once per successful send/recv call with the bytes it moved.
 */
#ifndef INFPROF_TCP_HOOKS_H
#define INFPROF_TCP_HOOKS_H

#include <linux/in.h>      /* IPPROTO_TCP */
#include <linux/socket.h>  /* MSG_PEEK */
#include <linux/version.h> /* KERNEL_VERSION: tcp_recvmsg's signature */
#include <net/sock.h>      /* struct sock */

#include "histogram.h" /* count_error, ERR_MAP_FULL (kprobe variant) */

/* KRETFUNC_PROBE and PT_REGS_RC come from BCC's helpers, which BCC includes in every program. */

#if defined(ATTACH_TRACEPOINT)
/* Linux >= 6.5: sock:sock_{send,recv}_length fire after every sendmsg/recvmsg on any
 * socket. BCC generates tracepoint structs only in the main file, so this one is
 * spelled out; offsets as in /sys/kernel/tracing/events/sock/sock_send_length/format
 * (tests/test_ebpf_kernel.py checks them against the running kernel). */
struct sock_length_args {
    u64 common;   /* offset 0: common_type, flags, preempt_count, pid */
    void *sk;     /* offset 8 */
    u16 family;   /* offset 16 */
    u16 protocol; /* offset 18 */
    int ret;      /* offset 20: bytes moved, or -errno */
    int flags;    /* offset 24: MSG_* flags of the call */
};

int tracepoint__sock__sock_send_length(struct sock_length_args *args)
{
    if (args->protocol != IPPROTO_TCP || args->ret <= 0)
        return 0;
    return on_tcp_send(args, (struct sock *)args->sk, (u32)args->ret);
}

int tracepoint__sock__sock_recv_length(struct sock_length_args *args)
{
    /* MSG_PEEK leaves the data queued: the real read comes later */
    if (args->protocol != IPPROTO_TCP || args->ret <= 0 || (args->flags & MSG_PEEK))
        return 0;
    return on_tcp_recv(args, (struct sock *)args->sk, (u32)args->ret);
}

#elif defined(ATTACH_FENTRY)
/* fexit sees the arguments and the return value in one program. */
KRETFUNC_PROBE(tcp_sendmsg, struct sock *sk, struct msghdr *msg, size_t size, int ret)
{
    if (ret <= 0)
        return 0;
    return on_tcp_send(ctx, sk, (u32)ret);
}

#if LINUX_VERSION_CODE >= KERNEL_VERSION(5, 19, 0)
KRETFUNC_PROBE(tcp_recvmsg, struct sock *sk, struct msghdr *msg, size_t len, int flags,
               int *addr_len, int ret)
#else
KRETFUNC_PROBE(tcp_recvmsg, struct sock *sk, struct msghdr *msg, size_t len, int nonblock,
               int flags, int *addr_len, int ret)
#endif
{
    if (ret <= 0 || (flags & MSG_PEEK))
        return 0;
    return on_tcp_recv(ctx, sk, (u32)ret);
}

#elif defined(ATTACH_KPROBE)
/* kretprobes do not see arguments: the entry probe parks sk per thread. */
struct call_args {
    struct sock *sk;
    int peek;
};
BPF_HASH(calls_in_flight, u64, struct call_args, 16384);

static __always_inline int park_call(struct sock *sk, int peek)
{
    u64 id = bpf_get_current_pid_tgid();
    struct call_args a = {.sk = sk, .peek = peek};
    if (calls_in_flight.update(&id, &a))
        count_error(ERR_MAP_FULL);
    return 0;
}

int kprobe__tcp_sendmsg(struct pt_regs *ctx, struct sock *sk)
{
    return park_call(sk, 0);
}

int kretprobe__tcp_sendmsg(struct pt_regs *ctx)
{
    u64 id = bpf_get_current_pid_tgid();
    struct call_args *a = calls_in_flight.lookup(&id);
    if (!a)
        return 0;
    struct sock *sk = a->sk;
    calls_in_flight.delete(&id);
    int ret = PT_REGS_RC(ctx);
    return ret > 0 ? on_tcp_send(ctx, sk, (u32)ret) : 0;
}

#if LINUX_VERSION_CODE >= KERNEL_VERSION(5, 19, 0)
int kprobe__tcp_recvmsg(struct pt_regs *ctx, struct sock *sk, struct msghdr *msg, size_t len,
                        int flags)
#else
int kprobe__tcp_recvmsg(struct pt_regs *ctx, struct sock *sk, struct msghdr *msg, size_t len,
                        int nonblock, int flags)
#endif
{
    return park_call(sk, flags & MSG_PEEK);
}

int kretprobe__tcp_recvmsg(struct pt_regs *ctx)
{
    u64 id = bpf_get_current_pid_tgid();
    struct call_args *a = calls_in_flight.lookup(&id);
    if (!a)
        return 0;
    struct sock *sk = a->sk;
    int peek = a->peek;
    calls_in_flight.delete(&id);
    int ret = PT_REGS_RC(ctx);
    return ret > 0 && !peek ? on_tcp_recv(ctx, sk, (u32)ret) : 0;
}

#else
#error "define one of ATTACH_TRACEPOINT, ATTACH_FENTRY, ATTACH_KPROBE"
#endif

#endif
