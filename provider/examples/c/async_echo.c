/*
 * async_echo.c — the provider's asynchronous C ABI end to end: a TCP echo server that accepts
 * through WSPEventSelect(FD_ACCEPT), echoes several concurrent connections with overlapped
 * WSPRecv / WSPSend completing into a completion queue (drained by one worker thread), and
 * then shows abort-on-close: a pending overlapped WSPRecv with a completion routine completes
 * with WSA_OPERATION_ABORTED after WSPCloseSocket, its buffer untouched.
 *
 * Build (from the workspace root, after `cargo build -p provider`):
 *
 *   gcc -Wall -Wextra -O2 -I provider/include provider/examples/c/async_echo.c -pthread \
 *       -L target/debug -lprovider -Wl,-rpath,"$PWD/target/debug" -o target/debug/async-echo-c
 *
 * Run as root inside the network namespace that owns IFACE:
 *
 *   async-echo-c IFACE LISTEN_PORT NCONN
 *
 * 1. provider_start(IFACE); listen on 0.0.0.0:LISTEN_PORT with FD_ACCEPT selected; print
 *    "ready".
 * 2. Accept NCONN connections as they come (waiting on the accept event and a "done" event at
 *    once with provider_wait_for_multiple_events), associate each with the completion queue
 *    (key = its slot) and echo it: overlapped recv → overlapped send of what came → recv …
 *    until the peer closes; print "conn K echoed N" per connection, then "echo done".
 * 3. Accept one more connection (its peer stays idle), post an overlapped WSPRecv with a
 *    completion routine, print "pending", close the socket: the routine runs with
 *    WSA_OPERATION_ABORTED (995); print "aborted 995 untouched" (WSPGetOverlappedResult's code,
 *    and the receive buffer was not written). The idle peer sees a graceful close (EOF).
 * 4. provider_stop().
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "provider.h"

#define MAX_CONN 64
#define BUF_SIZE 16384

static uint16_t be16(uint16_t v) { return (uint16_t)((v << 8) | (v >> 8)); }

static void die(const char *what, int err) {
    fprintf(stderr, "async-echo-c: %s failed: Winsock error %d\n", what, err);
    provider_stop();
    exit(1);
}

/* One echoed connection. Each WSAOVERLAPPED has at most one operation pending: recv and send
 * alternate, so the buffer is free while the (copied-at-issue) send is in flight. */
struct conn {
    SOCKET s;
    WSAOVERLAPPED rov, sov;
    WSABUF wb;
    unsigned long long echoed;
    char buf[BUF_SIZE];
};

static struct conn conns[MAX_CONN];
static HANDLE queue;       /* completion queue */
static WSAEVENT done_ev;   /* set by the worker when every connection is finished */
static int nconn;

/* Post an overlapped receive; its completion (immediate or later) arrives through the queue. */
static int post_recv(struct conn *c) {
    DWORD flags = 0;
    int err = 0;
    memset(&c->rov, 0, sizeof c->rov);
    c->wb.len = sizeof c->buf;
    c->wb.buf = c->buf;
    if (WSPRecv(c->s, &c->wb, 1, NULL, &flags, &c->rov, NULL, NULL, &err) == SOCKET_ERROR &&
        err != WSA_IO_PENDING)
        return err;
    return 0;
}

/* Post an overlapped send of buf[0..n) (the provider copies the bytes now). */
static int post_send(struct conn *c, DWORD n) {
    int err = 0;
    WSABUF wb = {n, c->buf};
    memset(&c->sov, 0, sizeof c->sov);
    if (WSPSend(c->s, &wb, 1, NULL, 0, &c->sov, NULL, NULL, &err) == SOCKET_ERROR &&
        err != WSA_IO_PENDING)
        return err;
    return 0;
}

/* The worker: drains the completion queue until it is closed. */
static void *worker(void *arg) {
    int finished = 0;
    (void)arg;
    for (;;) {
        DWORD n = 0;
        ULONG_PTR key = 0;
        LPWSAOVERLAPPED ov = NULL;
        int err = 0;
        BOOL ok = provider_get_queued_completion(queue, &n, &key, &ov, WSA_INFINITE, &err);
        if (!ok && ov == NULL)
            break; /* the queue was closed */
        struct conn *c = &conns[key];
        int next = 0;
        if (ov == &c->rov) {
            if (ok && n > 0)
                next = post_send(c, n);
            else
                next = ok ? -1 : err; /* EOF, or the receive failed */
        } else {
            if (ok) {
                c->echoed += n;
                next = post_recv(c);
            } else {
                next = err;
            }
        }
        if (next != 0) {
            int cerr = 0;
            if (next > 0)
                fprintf(stderr, "async-echo-c: conn %lu: error %d\n", (unsigned long)key, next);
            if (WSPCloseSocket(c->s, &cerr) == SOCKET_ERROR)
                die("WSPCloseSocket", cerr);
            printf("conn %lu echoed %llu\n", (unsigned long)key, c->echoed);
            fflush(stdout);
            if (++finished == nconn)
                provider_set_event(done_ev);
        }
    }
    return NULL;
}

/* Accept every connection waiting on the (nonblocking, event-selected) listener. */
static int accept_ready(SOCKET ls, int *accepted, int limit) {
    int got = 0;
    while (*accepted < limit) {
        int err = 0;
        SOCKET s = WSPAccept(ls, NULL, NULL, NULL, 0, &err);
        if (s == INVALID_SOCKET) {
            if (err == WSAEWOULDBLOCK)
                break;
            die("WSPAccept", err);
        }
        /* The accepted socket inherits FD_ACCEPT selection on the same event: cancel it. */
        if (WSPEventSelect(s, NULL, 0, &err) == SOCKET_ERROR)
            die("WSPEventSelect(cancel)", err);
        struct conn *c = &conns[*accepted];
        c->s = s;
        c->echoed = 0;
        if (provider_associate_completion_queue(queue, s, (ULONG_PTR)*accepted, &err) ==
            SOCKET_ERROR)
            die("provider_associate_completion_queue", err);
        if ((err = post_recv(c)) != 0)
            die("WSPRecv (overlapped)", err);
        ++*accepted;
        ++got;
    }
    return got;
}

/* Step 3's completion routine: runs on the provider's completion thread. hEvent is free for
 * the application when a routine is given: it carries the event to set. */
static void abort_routine(DWORD dwError, DWORD cbTransferred, LPWSAOVERLAPPED lpOverlapped,
                          DWORD dwFlags) {
    printf("routine error %u bytes %u flags %u\n", (unsigned)dwError, (unsigned)cbTransferred,
           (unsigned)dwFlags);
    fflush(stdout);
    provider_set_event(lpOverlapped->hEvent);
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s IFACE LISTEN_PORT NCONN\n", argv[0]);
        return 2;
    }
    nconn = atoi(argv[3]);
    if (nconn < 1 || nconn > MAX_CONN) {
        fprintf(stderr, "async-echo-c: NCONN must be 1..%d\n", MAX_CONN);
        return 2;
    }
    int err = 0;
    if (provider_start(argv[1], &err) == SOCKET_ERROR)
        die("provider_start", err);

    WSAEVENT accept_ev = provider_create_event();
    done_ev = provider_create_event();
    queue = provider_create_completion_queue();
    if (accept_ev == NULL || done_ev == NULL || queue == NULL)
        die("provider_create_*", 0);

    /* 1. Listen, FD_ACCEPT selected. */
    SOCKET ls = WSPSocket(AF_INET, SOCK_STREAM, IPPROTO_TCP, NULL, 0, WSA_FLAG_OVERLAPPED, &err);
    if (ls == INVALID_SOCKET)
        die("WSPSocket", err);
    struct sockaddr_in any;
    memset(&any, 0, sizeof any);
    any.sin_family = AF_INET;
    any.sin_port = be16((uint16_t)atoi(argv[2]));
    if (WSPBind(ls, (const struct sockaddr *)&any, sizeof any, &err) == SOCKET_ERROR)
        die("WSPBind", err);
    if (WSPListen(ls, SOMAXCONN, &err) == SOCKET_ERROR)
        die("WSPListen", err);
    if (WSPEventSelect(ls, accept_ev, FD_ACCEPT, &err) == SOCKET_ERROR)
        die("WSPEventSelect", err);
    pthread_t th;
    if (pthread_create(&th, NULL, worker, NULL) != 0)
        die("pthread_create", 0);
    printf("ready\n");
    fflush(stdout);

    /* 2. Accept and echo until every connection is finished. */
    int accepted = 0;
    WSAEVENT both[2] = {accept_ev, done_ev};
    for (;;) {
        DWORD w = provider_wait_for_multiple_events(2, both, 0, WSA_INFINITE, 0);
        if (w == WSA_WAIT_EVENT_0 + 1)
            break;
        if (w != WSA_WAIT_EVENT_0)
            die("provider_wait_for_multiple_events", (int)w);
        WSANETWORKEVENTS ne;
        if (WSPEnumNetworkEvents(ls, accept_ev, &ne, &err) == SOCKET_ERROR)
            die("WSPEnumNetworkEvents", err);
        if (ne.lNetworkEvents & FD_ACCEPT) {
            if (ne.iErrorCode[FD_ACCEPT_BIT] != 0)
                die("FD_ACCEPT", ne.iErrorCode[FD_ACCEPT_BIT]);
            accept_ready(ls, &accepted, nconn);
        }
    }
    printf("echo done\n");
    fflush(stdout);
    if (!provider_close_completion_queue(queue)) /* ends the worker */
        die("provider_close_completion_queue", 0);
    pthread_join(th, NULL);

    /* 3. Abort on close: a pending overlapped receive with a completion routine. */
    SOCKET s = INVALID_SOCKET;
    while (s == INVALID_SOCKET) {
        if (provider_wait_for_multiple_events(1, &accept_ev, 0, 30000, 0) != WSA_WAIT_EVENT_0)
            die("waiting for the idle connection", 0);
        WSANETWORKEVENTS ne;
        if (WSPEnumNetworkEvents(ls, accept_ev, &ne, &err) == SOCKET_ERROR)
            die("WSPEnumNetworkEvents", err);
        s = WSPAccept(ls, NULL, NULL, NULL, 0, &err);
        if (s == INVALID_SOCKET && err != WSAEWOULDBLOCK)
            die("WSPAccept", err);
    }
    WSAEVENT abort_ev = provider_create_event();
    static char idle_buf[256];
    memset(idle_buf, 0x5a, sizeof idle_buf);
    WSABUF wb = {sizeof idle_buf, idle_buf};
    WSAOVERLAPPED ov;
    memset(&ov, 0, sizeof ov);
    ov.hEvent = abort_ev; /* context for the routine, not read by the provider */
    DWORD flags = 0;
    if (WSPRecv(s, &wb, 1, NULL, &flags, &ov, abort_routine, NULL, &err) != SOCKET_ERROR ||
        err != WSA_IO_PENDING)
        die("WSPRecv (should be pending)", err);
    printf("pending\n");
    fflush(stdout);
    if (WSPCloseSocket(s, &err) == SOCKET_ERROR)
        die("WSPCloseSocket", err);
    if (provider_wait_for_multiple_events(1, &abort_ev, 0, 10000, 0) != WSA_WAIT_EVENT_0)
        die("waiting for the completion routine", 0);
    DWORD bytes = 0, oflags = 0;
    int code = 0;
    if (WSPGetOverlappedResult(s, &ov, &bytes, 0, &oflags, &code))
        die("WSPGetOverlappedResult (should fail)", 0);
    int untouched = 1;
    for (size_t i = 0; i < sizeof idle_buf; i++)
        untouched &= idle_buf[i] == 0x5a;
    printf("aborted %d %s\n", code, untouched ? "untouched" : "WRITTEN");
    fflush(stdout);

    provider_close_event(abort_ev);
    provider_close_event(accept_ev);
    provider_close_event(done_ev);
    if (WSPCloseSocket(ls, &err) == SOCKET_ERROR)
        die("WSPCloseSocket (listener)", err);
    provider_stop();
    return 0;
}
