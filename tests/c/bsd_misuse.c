/* Misuse of the BSD socket calls, compiled without any provider header: bad descriptors, bad
 * lengths, flags and option values, NULL pointers, the wrong kind of socket, the wrong state.
 * Each case prints one line `NAME: r=R errno=ENAME [extra]`, and nothing in the output depends
 * on descriptor numbers, ephemeral ports or timing, so a run on the kernel's sockets and a run
 * under the preload library must print the same lines: the preload gives the errnos Linux gives.
 * Accepts one connection whose client sends "hello" and waits; runs the cases (none of which may
 * consume or send data); then reads "hello" (the failed calls lost nothing), answers "bye\n" and
 * closes.  Never sends to any address: the UDP sendto cases that name 198.18.0.2 fail before
 * sending (port 0, oversized datagram).  usage: bsd_misuse PORT */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/select.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

static void die(const char *what) {
    printf("error %s: %s\n", what, strerror(errno));
    fflush(stdout);
    exit(1);
}

/* NULL the compiler cannot see through (so _FORTIFY_SOURCE and -Wnonnull stay quiet). */
static void *volatile vnull = NULL;
#define NUL ((void *)vnull)
/* Likewise -1 as a count (the access attributes on readv, epoll_wait would warn). */
static volatile int vminus1 = -1;

static const char *ename(int e) {
    static char other[32];
    switch (e) {
    case 0: return "0";
    case EPERM: return "EPERM";
    case ENOENT: return "ENOENT";
    case EINTR: return "EINTR";
    case EIO: return "EIO";
    case ENXIO: return "ENXIO";
    case E2BIG: return "E2BIG";
    case EBADF: return "EBADF";
    case EAGAIN: return "EAGAIN";
    case ENOMEM: return "ENOMEM";
    case EACCES: return "EACCES";
    case EFAULT: return "EFAULT";
    case EBUSY: return "EBUSY";
    case EEXIST: return "EEXIST";
    case ENODEV: return "ENODEV";
    case ENOTDIR: return "ENOTDIR";
    case EISDIR: return "EISDIR";
    case EINVAL: return "EINVAL";
    case ENFILE: return "ENFILE";
    case EMFILE: return "EMFILE";
    case ENOTTY: return "ENOTTY";
    case EFBIG: return "EFBIG";
    case ENOSPC: return "ENOSPC";
    case ESPIPE: return "ESPIPE";
    case EPIPE: return "EPIPE";
    case ERANGE: return "ERANGE";
    case ENOSYS: return "ENOSYS";
    case ELOOP: return "ELOOP";
    case ENOTSOCK: return "ENOTSOCK";
    case EDESTADDRREQ: return "EDESTADDRREQ";
    case EMSGSIZE: return "EMSGSIZE";
    case EPROTOTYPE: return "EPROTOTYPE";
    case ENOPROTOOPT: return "ENOPROTOOPT";
    case EPROTONOSUPPORT: return "EPROTONOSUPPORT";
    case ESOCKTNOSUPPORT: return "ESOCKTNOSUPPORT";
    case EOPNOTSUPP: return "EOPNOTSUPP";
    case EPFNOSUPPORT: return "EPFNOSUPPORT";
    case EAFNOSUPPORT: return "EAFNOSUPPORT";
    case EADDRINUSE: return "EADDRINUSE";
    case EADDRNOTAVAIL: return "EADDRNOTAVAIL";
    case ENETDOWN: return "ENETDOWN";
    case ENETUNREACH: return "ENETUNREACH";
    case ECONNABORTED: return "ECONNABORTED";
    case ECONNRESET: return "ECONNRESET";
    case ENOBUFS: return "ENOBUFS";
    case EISCONN: return "EISCONN";
    case ENOTCONN: return "ENOTCONN";
    case ESHUTDOWN: return "ESHUTDOWN";
    case ETIMEDOUT: return "ETIMEDOUT";
    case ECONNREFUSED: return "ECONNREFUSED";
    case EHOSTUNREACH: return "EHOSTUNREACH";
    case EALREADY: return "EALREADY";
    case EINPROGRESS: return "EINPROGRESS";
    default:
        snprintf(other, sizeof other, "E%d", e);
        return other;
    }
}

/* The last call's result and errno: CALL(expr) clears errno, runs expr, keeps both. */
static long R;
static int E;
#define CALL(expr) (errno = 0, R = (long)(expr), E = errno)

/* One case line; the extra (printf format) only when the call succeeded. */
static void line(const char *name, const char *fmt, ...) {
    printf("%s: r=%ld errno=%s", name, R, R == -1 ? ename(E) : "0");
    if (fmt != NULL && R != -1) {
        va_list ap;
        va_start(ap, fmt);
        putchar(' ');
        vprintf(fmt, ap);
        va_end(ap);
    }
    putchar('\n');
}

/* As line(), but a success prints `ok=1` instead of r (r holds bits that are not compared). */
static void okline(const char *name, const char *fmt, ...) {
    if (R == -1) {
        printf("%s: r=-1 errno=%s\n", name, ename(E));
        return;
    }
    printf("%s: ok=1 errno=0", name);
    if (fmt != NULL) {
        va_list ap;
        va_start(ap, fmt);
        putchar(' ');
        vprintf(fmt, ap);
        va_end(ap);
    }
    putchar('\n');
}

/* A case whose success is a new descriptor: never print its number. `target` >= 0 is the
 * descriptor asked for (dup2/dup3): `same=1` when the result is it, else `ok=1`. A descriptor
 * made by a call that should have failed is closed again when `close_it`. */
static void fdline(const char *name, long target, int close_it) {
    if (R == -1)
        printf("%s: r=-1 errno=%s\n", name, ename(E));
    else if (R < 0)
        printf("%s: r=%ld errno=0\n", name, R);
    else if (target >= 0 && R == target)
        printf("%s: same=1 errno=0\n", name);
    else
        printf("%s: ok=1 errno=0\n", name);
    if (close_it && R >= 0) close((int)R);
}

static int tcp_socket(void) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    if (s < 0) die("socket");
    return s;
}

static void set_nonblock(int fd) {
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) die("O_NONBLOCK");
}

static struct iovec many[1025]; /* UIO_MAXIOV + 1 zero-length entries */

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s PORT\n", argv[0]);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    unsigned short port = (unsigned short)atoi(argv[1]);
    int one = 1;
    int l = tcp_socket();
    if (setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0) die("SO_REUSEADDR");
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_ANY);
    if (bind(l, (struct sockaddr *)&a, sizeof a) < 0) die("bind");
    if (listen(l, 16) < 0) die("listen");
    int u = socket(AF_INET, SOCK_DGRAM, 0);
    if (u < 0) die("socket udp");
    if (bind(u, (struct sockaddr *)&a, sizeof a) < 0) die("bind udp");
    printf("ready\n");
    fflush(stdout);

    int c = accept(l, NULL, NULL);
    if (c < 0) die("accept");
    /* Wait until all of "hello" is queued, without reading it. */
    char buf[128];
    for (int i = 0;; i++) {
        struct pollfd w = {.fd = c, .events = POLLIN};
        if (poll(&w, 1, 5000) != 1) die("poll for hello");
        int n = 0;
        if (ioctl(c, FIONREAD, &n) < 0) die("FIONREAD");
        if (n >= 5) break;
        if (i >= 5000) die("hello did not arrive");
        usleep(1000);
    }
    set_nonblock(c);
    set_nonblock(l);
    set_nonblock(u);

    /* A descriptor number that is surely closed (never printed). */
    int bad = 1000;
    while (fcntl(bad, F_GETFD) != -1 || errno != EBADF) bad++;
    int pfd[2];
    if (pipe(pfd) < 0) die("pipe");
    int pi = pfd[0];
    char tmpl[] = "/tmp/bsd_misuse.XXXXXX";
    int file = mkstemp(tmpl);
    if (file < 0) die("mkstemp");
    unlink(tmpl);
    if (write(file, "0123456789", 10) != 10) die("write file");
    int t = tcp_socket(); /* fresh, unbound, unconnected */
    set_nonblock(t);

    struct sockaddr_in peer;
    socklen_t plen = sizeof peer;
    if (getpeername(c, (struct sockaddr *)&peer, &plen) < 0) die("getpeername");
    struct sockaddr_in6 a6 = {0};
    a6.sin6_family = AF_INET6;
    a6.sin6_port = htons(port);
    struct sockaddr_in far = {0}; /* 198.18.0.2:9, only for sends that fail before sending */
    far.sin_family = AF_INET;
    far.sin_port = htons(9);
    far.sin_addr.s_addr = inet_addr("198.18.0.2");
    struct sockaddr_in far0 = far;
    far0.sin_port = 0;
    struct sockaddr_in sa;
    socklen_t len;
    int neg = -1;
    int v;
    socklen_t vl;
    struct linger lg = {.l_onoff = 1, .l_linger = 0};

    /* socket */
    CALL(socket(AF_INET, 99, 0)); fdline("socket_type99", -1, 1);
    CALL(socket(AF_INET, SOCK_STREAM, IPPROTO_UDP)); fdline("socket_stream_udp", -1, 1);
    CALL(socket(AF_INET, SOCK_DGRAM, IPPROTO_TCP)); fdline("socket_dgram_tcp", -1, 1);
    CALL(socket(9999, SOCK_STREAM, 0)); fdline("socket_family9999", -1, 1);
    CALL(socket(AF_INET, SOCK_STREAM | 0x40000000, 0)); fdline("socket_badflag", -1, 1);

    /* bind */
    CALL(bind(bad, (struct sockaddr *)&a, sizeof a)); line("bind_badfd", NULL);
    CALL(bind(t, NUL, sizeof a)); line("bind_null", NULL);
    CALL(bind(t, (struct sockaddr *)&a, 3)); line("bind_len3", NULL);
    CALL(bind(t, (struct sockaddr *)&a6, sizeof a6)); line("bind_inet6_on_inet", NULL);
    CALL(bind(l, (struct sockaddr *)&a, sizeof a)); line("bind_again_l", NULL);
    CALL(bind(u, (struct sockaddr *)&a, sizeof a)); line("bind_again_u", NULL);
    CALL(bind(c, (struct sockaddr *)&a, sizeof a)); line("bind_c", NULL);

    /* listen */
    CALL(listen(u, 16)); line("listen_u", NULL);
    CALL(listen(c, 16)); line("listen_c", NULL);
    CALL(listen(bad, 16)); line("listen_badfd", NULL);

    /* accept / accept4 */
    CALL(accept(c, NULL, NULL)); fdline("accept_c", -1, 1);
    CALL(accept(u, NULL, NULL)); fdline("accept_u", -1, 1);
    CALL(accept4(l, NULL, NULL, 0x1)); fdline("accept4_badflags", -1, 1);
    CALL(accept(l, NULL, NULL)); fdline("accept_l_none_pending", -1, 1);
    CALL(accept(l, (struct sockaddr *)&sa, (socklen_t *)&neg)); fdline("accept_l_neglen", -1, 1);
    CALL(accept4(bad, NULL, NULL, 0)); fdline("accept4_badfd", -1, 1);

    /* connect */
    CALL(connect(c, (struct sockaddr *)&peer, sizeof peer)); line("connect_c_again", NULL);
    CALL(connect(t, NUL, sizeof a)); line("connect_null", NULL);
    CALL(connect(t, (struct sockaddr *)&peer, 3)); line("connect_len3", NULL);
    CALL(connect(t, (struct sockaddr *)&a6, sizeof a6)); line("connect_inet6_on_inet", NULL);
    CALL(connect(l, (struct sockaddr *)&peer, sizeof peer)); line("connect_l", NULL);
    CALL(connect(u, (struct sockaddr *)&peer, 3)); line("connect_u_len3", NULL);
    CALL(connect(bad, (struct sockaddr *)&peer, sizeof peer)); line("connect_badfd", NULL);

    /* read / write / readv / writev */
    struct iovec one_iov = {.iov_base = buf, .iov_len = 5};
    CALL(read(c, NUL, 10)); line("read_c_null", NULL);
    CALL(read(c, buf, 0)); line("read_c_len0", NULL);
    CALL(write(c, NUL, 10)); line("write_c_null", NULL);
    CALL(write(c, buf, 0)); line("write_c_len0", NULL);
    CALL(readv(c, &one_iov, vminus1)); line("readv_c_cnt-1", NULL);
    CALL(readv(c, &one_iov, 0)); line("readv_c_cnt0", NULL);
    CALL(readv(c, many, 1025)); line("readv_c_cnt1025", NULL);
    CALL(readv(c, NUL, 1)); line("readv_c_iovnull", NULL);
    CALL(writev(c, &one_iov, vminus1)); line("writev_c_cnt-1", NULL);
    CALL(writev(c, &one_iov, 0)); line("writev_c_cnt0", NULL);
    CALL(writev(c, many, 1025)); line("writev_c_cnt1025", NULL);
    CALL(writev(c, NUL, 1)); line("writev_c_iovnull", NULL);
    CALL(read(l, buf, 10)); line("read_l", NULL);
    CALL(write(l, "x", 1)); line("write_l", NULL);
    CALL(read(u, buf, 10)); line("read_u_empty", NULL);
    CALL(write(u, "x", 1)); line("write_u_nodest", NULL);
    CALL(read(bad, buf, 10)); line("read_badfd", NULL);
    CALL(write(bad, "x", 1)); line("write_badfd", NULL);
    CALL(readv(bad, &one_iov, 1)); line("readv_badfd", NULL);
    CALL(lseek(c, 0, SEEK_CUR)); line("lseek_c", NULL);
    CALL(pread(c, buf, 5, 0)); line("pread_c", NULL);

    /* send / recv */
    CALL(recv(c, NUL, 10, MSG_DONTWAIT)); line("recv_c_null", NULL);
    CALL(send(c, NUL, 10, MSG_DONTWAIT)); line("send_c_null", NULL);
    CALL(send(c, buf, 0, 0)); line("send_c_len0", NULL);
    CALL(recv(c, buf, 0, 0)); line("recv_c_len0", NULL);
    CALL(recv(c, buf, 1, MSG_OOB)); line("recv_c_oob_none", NULL);
    CALL(recv(c, buf, sizeof buf, MSG_ERRQUEUE)); line("recv_c_errqueue_empty", NULL);
    CALL(recv(l, buf, 10, 0)); line("recv_l", NULL);
    CALL(send(u, "x", 1, 0)); line("send_u_nodest", NULL);
    CALL(recv(u, buf, 10, 0)); line("recv_u_empty", NULL);

    /* sendto / recvfrom */
    CALL(sendto(u, "x", 1, 0, (struct sockaddr *)&far, 3)); line("sendto_u_len3", NULL);
    CALL(sendto(u, "x", 1, 0, NUL, sizeof far)); line("sendto_u_nulldest", NULL);
    CALL(sendto(u, "x", 1, 0, (struct sockaddr *)&far0, sizeof far0)); line("sendto_u_port0", NULL);
    CALL(sendto(u, "x", 1, 0, (struct sockaddr *)&a6, sizeof a6)); line("sendto_u_inet6", NULL);
    static char huge[65508];
    CALL(sendto(u, huge, sizeof huge, 0, (struct sockaddr *)&far, sizeof far)); line("sendto_u_65508", NULL);
    len = sizeof sa;
    CALL(recvfrom(u, buf, sizeof buf, 0, (struct sockaddr *)&sa, &len)); line("recvfrom_u_empty", NULL);
    CALL(recvfrom(u, buf, sizeof buf, 0, (struct sockaddr *)&sa, (socklen_t *)&neg)); line("recvfrom_u_neglen", NULL);
    CALL(recvfrom(c, buf, 5, MSG_PEEK, (struct sockaddr *)&sa, (socklen_t *)&neg)); line("recvfrom_c_peek_neglen", NULL);
    CALL(recvfrom(c, buf, 5, MSG_PEEK, (struct sockaddr *)&sa, NUL)); line("recvfrom_c_peek_lennull", NULL);
    CALL(recvfrom(bad, buf, 5, 0, NULL, NULL)); line("recvfrom_badfd", NULL);

    /* sendmsg / recvmsg */
    struct msghdr m;
    memset(&m, 0, sizeof m);
    CALL(sendmsg(c, NUL, 0)); line("sendmsg_c_null", NULL);
    CALL(recvmsg(c, NUL, 0)); line("recvmsg_c_null", NULL);
    m.msg_iov = many;
    m.msg_iovlen = 1025;
    CALL(sendmsg(c, &m, 0)); line("sendmsg_c_iovlen1025", NULL);
    CALL(recvmsg(c, &m, 0)); line("recvmsg_c_iovlen1025", NULL);
    m.msg_iov = NUL;
    m.msg_iovlen = 1;
    CALL(sendmsg(c, &m, 0)); line("sendmsg_c_iovnull", NULL);
    CALL(recvmsg(c, &m, 0)); line("recvmsg_c_iovnull", NULL);
    struct iovec x_iov = {.iov_base = "x", .iov_len = 1};
    m.msg_iov = &one_iov;
    m.msg_iovlen = 1;
    CALL(recvmsg(l, &m, 0)); line("recvmsg_l", NULL);
    CALL(recvmsg(u, &m, 0)); line("recvmsg_u_empty", NULL);
    m.msg_iov = &x_iov;
    CALL(sendmsg(u, &m, 0)); line("sendmsg_u_noname", NULL);
    m.msg_name = &far;
    m.msg_namelen = 3;
    CALL(sendmsg(u, &m, 0)); line("sendmsg_u_namelen3", NULL);
    memset(&m, 0, sizeof m);

    /* sendmmsg / recvmmsg */
    struct mmsghdr mm;
    memset(&mm, 0, sizeof mm);
    mm.msg_hdr.msg_iov = &one_iov;
    mm.msg_hdr.msg_iovlen = 1;
    struct timespec badts = {.tv_sec = 0, .tv_nsec = 2000000000L};
    CALL(sendmmsg(u, &mm, 0, 0)); line("sendmmsg_u_vlen0", NULL);
    CALL(recvmmsg(u, &mm, 0, MSG_DONTWAIT, NULL)); line("recvmmsg_u_vlen0", NULL);
    CALL(sendmmsg(u, NUL, 1, 0)); line("sendmmsg_u_null", NULL);
    CALL(recvmmsg(u, NUL, 1, MSG_DONTWAIT, NULL)); line("recvmmsg_u_null", NULL);
    CALL(sendmmsg(bad, &mm, 1, 0)); line("sendmmsg_badfd", NULL);
    CALL(recvmmsg(bad, &mm, 1, 0, NULL)); line("recvmmsg_badfd", NULL);
    CALL(recvmmsg(u, &mm, 1, MSG_DONTWAIT, NULL)); line("recvmmsg_u_empty", NULL);
    CALL(recvmmsg(u, &mm, 1, MSG_DONTWAIT, &badts)); line("recvmmsg_u_badtimeout", NULL);

    /* getsockname / getpeername */
    len = sizeof sa;
    CALL(getsockname(c, NUL, &len)); line("getsockname_c_null", NULL);
    CALL(getsockname(c, (struct sockaddr *)&sa, NUL)); line("getsockname_c_lennull", NULL);
    CALL(getsockname(c, (struct sockaddr *)&sa, (socklen_t *)&neg)); line("getsockname_c_neglen", NULL);
    len = 4;
    CALL(getsockname(c, (struct sockaddr *)&sa, &len)); line("getsockname_c_len4", "len=%u", (unsigned)len);
    len = sizeof sa;
    CALL(getsockname(t, (struct sockaddr *)&sa, &len));
    line("getsockname_t", "len=%u port=%u", (unsigned)len, (unsigned)ntohs(sa.sin_port));
    len = sizeof sa;
    CALL(getpeername(l, (struct sockaddr *)&sa, &len)); line("getpeername_l", NULL);
    CALL(getpeername(u, (struct sockaddr *)&sa, &len)); line("getpeername_u", NULL);
    CALL(getpeername(t, (struct sockaddr *)&sa, &len)); line("getpeername_t", NULL);
    CALL(getpeername(c, NUL, &len)); line("getpeername_c_null", NULL);
    len = sizeof sa;
    CALL(getpeername(bad, (struct sockaddr *)&sa, &len)); line("getpeername_badfd", NULL);

    /* setsockopt */
    v = 65536;
    CALL(setsockopt(c, SOL_SOCKET, SO_LINGER, &lg, 4)); line("setsockopt_linger_len4", NULL);
    CALL(setsockopt(c, SOL_SOCKET, SO_LINGER, NUL, sizeof lg)); line("setsockopt_linger_null", NULL);
    CALL(setsockopt(c, SOL_SOCKET, SO_REUSEADDR, &one, 0)); line("setsockopt_reuseaddr_len0", NULL);
    CALL(setsockopt(c, SOL_SOCKET, SO_RCVBUF, &v, 2)); line("setsockopt_rcvbuf_len2", NULL);
    CALL(setsockopt(c, IPPROTO_TCP, TCP_NODELAY, NUL, sizeof one)); line("setsockopt_nodelay_null", NULL);
    CALL(setsockopt(u, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one)); line("setsockopt_nodelay_u", NULL);
    CALL(setsockopt(c, SOL_SOCKET, 9999, &one, sizeof one)); line("setsockopt_sol9999", NULL);
    CALL(setsockopt(c, 9999, 1, &one, sizeof one)); line("setsockopt_level9999", NULL);
    CALL(setsockopt(c, SOL_SOCKET, SO_RCVBUF, &v, sizeof v)); line("setsockopt_rcvbuf", NULL);
    CALL(setsockopt(c, SOL_SOCKET, SO_SNDBUF, &v, sizeof v)); line("setsockopt_sndbuf", NULL);
    CALL(setsockopt(c, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one)); line("setsockopt_keepalive", NULL);
    CALL(setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one)); line("setsockopt_nodelay", NULL);
    CALL(setsockopt(c, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof one)); line("setsockopt_quickack", NULL);
    CALL(setsockopt(c, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one)); line("setsockopt_v6only_inet", NULL);
    CALL(setsockopt(bad, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one)); line("setsockopt_badfd", NULL);

    /* getsockopt */
    CALL(getsockopt(c, SOL_SOCKET, SO_TYPE, &v, NUL)); line("getsockopt_lennull", NULL);
    vl = 4;
    CALL(getsockopt(c, SOL_SOCKET, SO_TYPE, NUL, &vl)); line("getsockopt_valnull", NULL);
    CALL(getsockopt(c, SOL_SOCKET, SO_TYPE, &v, (socklen_t *)&neg)); line("getsockopt_neglen", NULL);
    v = -7, vl = sizeof v;
    CALL(getsockopt(c, SOL_SOCKET, SO_ERROR, &v, &vl)); line("getsockopt_error_c", "v=%d len=%u", v, (unsigned)vl);
    v = -7, vl = sizeof v;
    CALL(getsockopt(u, SOL_SOCKET, SO_TYPE, &v, &vl)); line("getsockopt_type_u", "v=%d len=%u", v, (unsigned)vl);
    v = -7, vl = sizeof v;
    CALL(getsockopt(l, SOL_SOCKET, SO_TYPE, &v, &vl)); line("getsockopt_type_l", "v=%d len=%u", v, (unsigned)vl);
    v = -7, vl = sizeof v;
    CALL(getsockopt(l, SOL_SOCKET, SO_ACCEPTCONN, &v, &vl)); line("getsockopt_acceptconn_l", "v=%d", v);
    v = -7, vl = sizeof v;
    CALL(getsockopt(c, SOL_SOCKET, SO_ACCEPTCONN, &v, &vl)); line("getsockopt_acceptconn_c", "v=%d", v);
    v = -7, vl = sizeof v;
    CALL(getsockopt(c, SOL_SOCKET, SO_DOMAIN, &v, &vl)); line("getsockopt_domain_c", "v=%d", v);
    v = -7, vl = sizeof v;
    CALL(getsockopt(u, SOL_SOCKET, SO_PROTOCOL, &v, &vl)); line("getsockopt_protocol_u", "v=%d", v);
    v = -7, vl = sizeof v;
    CALL(getsockopt(c, IPPROTO_TCP, TCP_NODELAY, &v, &vl)); line("getsockopt_nodelay_c", "v=%d len=%u", v, (unsigned)vl);
    v = -7, vl = sizeof v;
    CALL(getsockopt(u, IPPROTO_TCP, TCP_NODELAY, &v, &vl)); line("getsockopt_nodelay_u", NULL);
    vl = sizeof v;
    CALL(getsockopt(c, SOL_SOCKET, SO_RCVBUF, &v, &vl)); line("getsockopt_rcvbuf_c", "len=%u", (unsigned)vl);
    struct linger lb = {-7, -7};
    vl = 4;
    CALL(getsockopt(c, SOL_SOCKET, SO_LINGER, &lb, &vl)); line("getsockopt_linger_len4", "len=%u onoff=%d", (unsigned)vl, lb.l_onoff);
    v = -7, vl = 2;
    CALL(getsockopt(u, SOL_SOCKET, SO_TYPE, &v, &vl)); line("getsockopt_type_u_len2", "len=%u", (unsigned)vl);
    vl = sizeof v;
    CALL(getsockopt(c, SOL_SOCKET, 9999, &v, &vl)); line("getsockopt_sol9999", NULL);
    vl = sizeof v;
    CALL(getsockopt(bad, SOL_SOCKET, SO_TYPE, &v, &vl)); line("getsockopt_badfd", NULL);

    /* fcntl */
    CALL(fcntl(c, F_GETFL));
    okline("fcntl_getfl_c", "nonblock=%d rdwr=%d", (R & O_NONBLOCK) != 0, (R & O_ACCMODE) == O_RDWR);
    CALL(fcntl(c, F_SETFL, O_RDWR | O_NONBLOCK)); line("fcntl_setfl_c", NULL);
    CALL(fcntl(c, F_GETFD)); okline("fcntl_getfd_c", "cloexec=%d", (R & FD_CLOEXEC) != 0);
    CALL(fcntl(c, 9999)); line("fcntl_cmd9999", NULL);
    CALL(fcntl(bad, F_GETFD)); line("fcntl_badfd", NULL);

    /* ioctl */
    v = -7;
    CALL(ioctl(c, FIONREAD, &v)); line("ioctl_fionread_c", "v=%d", v);
    CALL(ioctl(c, FIONREAD, NUL)); line("ioctl_fionread_null", NULL);
    CALL(ioctl(c, FIONBIO, NUL)); line("ioctl_fionbio_null", NULL);
    CALL(ioctl(c, FIONBIO, &one)); line("ioctl_fionbio", NULL);
    v = -7;
    CALL(ioctl(c, SIOCOUTQ, &v)); line("ioctl_outq_c", "v=%d", v);
    v = -7;
    CALL(ioctl(c, SIOCATMARK, &v)); line("ioctl_atmark_c", "v=%d", v);
    CALL(ioctl(c, _IO('x', 99), &v)); line("ioctl_unknown_c", NULL);
    CALL(ioctl(l, FIONREAD, &v)); line("ioctl_fionread_l", NULL);
    CALL(ioctl(bad, FIONREAD, &v)); line("ioctl_badfd", NULL);
    struct stat st;
    CALL(fstat(c, &st)); line("fstat_c", "sock=%d", S_ISSOCK(st.st_mode) ? 1 : 0);

    /* dup / dup2 / dup3 */
    CALL(dup(bad)); fdline("dup_badfd", -1, 1);
    CALL(dup2(c, -1)); fdline("dup2_c_neg", -1, 1);
    CALL(dup3(c, c, 0)); fdline("dup3_c_c", c, 0);
    CALL(dup2(c, c)); fdline("dup2_c_c", c, 0);
    CALL(dup3(c, bad, 0x1)); fdline("dup3_badflags", bad, 1);
    CALL(dup(c)); fdline("dup_c", -1, 0);
    int d = (int)R;
    CALL(close(d)); line("close_dup_c", NULL);
    CALL(dup2(u, bad)); fdline("dup2_u_badfd", bad, 0);
    CALL(close(bad)); line("close_dup2_u", NULL);

    /* sendfile */
    off_t off = -1;
    CALL(sendfile(c, bad, NULL, 10)); line("sendfile_in_badfd", NULL);
    CALL(sendfile(c, u, NULL, 10)); line("sendfile_in_socket", NULL);
    CALL(sendfile(c, file, NULL, 0)); line("sendfile_count0", NULL);
    CALL(sendfile(c, file, &off, 10)); line("sendfile_negoffset", NULL);
    off = 0;
    CALL(sendfile(l, file, &off, 10)); line("sendfile_out_l", NULL);
    off = 0;
    CALL(sendfile(u, file, &off, 10)); line("sendfile_out_u_nodest", NULL);
    CALL(sendfile(bad, file, NULL, 10)); line("sendfile_out_badfd", NULL);

    /* poll / ppoll */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0) die("getrlimit");
    struct pollfd pf[3] = {{.fd = -1, .events = POLLIN}, {.fd = c, .events = POLLIN}, {.fd = bad, .events = POLLIN}};
    CALL(poll(NUL, 1, 0)); line("poll_null", NULL);
    CALL(poll(NUL, (nfds_t)rl.rlim_cur + 1, 0)); line("poll_nfds_over_rlimit", NULL);
    CALL(poll(pf, 3, 0));
    line("poll_three", "revents=0x%x,0x%x,0x%x", pf[0].revents, pf[1].revents, pf[2].revents);
    CALL(ppoll(&pf[1], 1, &badts, NULL)); line("ppoll_badtimeout", NULL);

    /* select / pselect */
    fd_set rs;
    struct timeval tv = {0, 0};
    FD_ZERO(&rs);
    FD_SET(c, &rs);
    CALL(select(-1, &rs, NULL, NULL, &tv)); line("select_nfds-1", NULL);
    struct timeval badtv = {0, -1};
    CALL(select(c + 1, &rs, NULL, NULL, &badtv)); line("select_usec-1", NULL);
    FD_ZERO(&rs);
    FD_SET(bad, &rs);
    tv.tv_sec = 0, tv.tv_usec = 0;
    CALL(select(bad + 1, &rs, NULL, NULL, &tv)); line("select_badfd", NULL);
    FD_ZERO(&rs);
    FD_SET(c, &rs);
    FD_SET(l, &rs);
    tv.tv_sec = 0, tv.tv_usec = 0;
    CALL(select((c > l ? c : l) + 1, &rs, NULL, NULL, &tv));
    line("select_c_l", "c=%d l=%d", FD_ISSET(c, &rs) ? 1 : 0, FD_ISSET(l, &rs) ? 1 : 0);
    /* Linux's select writes back the time left: all of it when ready at once, none after a
     * timeout. */
    FD_ZERO(&rs);
    FD_SET(c, &rs);
    tv.tv_sec = 5, tv.tv_usec = 0;
    CALL(select(c + 1, &rs, NULL, NULL, &tv));
    line("select_c_time_left", "most_left=%d", tv.tv_sec >= 4 ? 1 : 0);
    FD_ZERO(&rs);
    FD_SET(l, &rs);
    tv.tv_sec = 0, tv.tv_usec = 20000;
    CALL(select(l + 1, &rs, NULL, NULL, &tv));
    line("select_l_timeout_left", "left=%ld.%06ld", (long)tv.tv_sec, (long)tv.tv_usec);
    FD_ZERO(&rs);
    FD_SET(c, &rs);
    CALL(pselect(c + 1, &rs, NULL, NULL, &badts, NULL)); line("pselect_badtimeout", NULL);

    /* epoll */
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 7};
    struct epoll_event out[4];
    CALL(epoll_create1(0x1)); fdline("epoll_create1_badflags", -1, 1);
    CALL(epoll_create(0)); fdline("epoll_create_0", -1, 1);
    int ep = epoll_create1(0);
    if (ep < 0) die("epoll_create1");
    CALL(epoll_ctl(ep, EPOLL_CTL_ADD, c, &ev)); line("epoll_ctl_add_c", NULL);
    CALL(epoll_ctl(ep, EPOLL_CTL_ADD, c, &ev)); line("epoll_ctl_add_c_again", NULL);
    CALL(epoll_ctl(ep, EPOLL_CTL_MOD, bad, &ev)); line("epoll_ctl_mod_badfd", NULL);
    CALL(epoll_ctl(ep, EPOLL_CTL_DEL, u, NULL)); line("epoll_ctl_del_u_absent", NULL);
    CALL(epoll_ctl(ep, EPOLL_CTL_MOD, u, &ev)); line("epoll_ctl_mod_u_absent", NULL);
    CALL(epoll_ctl(ep, EPOLL_CTL_ADD, ep, &ev)); line("epoll_ctl_add_self", NULL);
    CALL(epoll_ctl(ep, EPOLL_CTL_ADD, l, NUL)); line("epoll_ctl_add_l_null", NULL);
    CALL(epoll_ctl(c, EPOLL_CTL_ADD, l, &ev)); line("epoll_ctl_epfd_c", NULL);
    CALL(epoll_ctl(ep, 99, l, &ev)); line("epoll_ctl_op99", NULL);
    struct epoll_event exev = {.events = EPOLLIN | EPOLLEXCLUSIVE, .data.u64 = 7};
    CALL(epoll_ctl(ep, EPOLL_CTL_MOD, c, &exev)); line("epoll_ctl_mod_exclusive", NULL);
    CALL(epoll_ctl(ep, EPOLL_CTL_ADD, file, &ev)); line("epoll_ctl_add_file", NULL);
    CALL(epoll_wait(ep, out, vminus1, 0)); line("epoll_wait_max-1", NULL);
    CALL(epoll_wait(ep, out, 0, 0)); line("epoll_wait_max0", NULL);
    CALL(epoll_wait(c, out, 4, 0)); line("epoll_wait_epfd_c", NULL);
    CALL(epoll_wait(bad, out, 4, 0)); line("epoll_wait_badfd", NULL);
    CALL(epoll_wait(ep, NUL, 4, 0)); line("epoll_wait_null_ready", NULL);
    memset(out, 0, sizeof out);
    CALL(epoll_pwait(ep, out, 4, 0, NULL));
    line("epoll_pwait_c", "events=0x%x data=%llu", out[0].events, (unsigned long long)out[0].data.u64);

    /* ENOTSOCK: socket calls on a pipe */
    len = sizeof sa;
    CALL(getsockname(pi, (struct sockaddr *)&sa, &len)); line("getsockname_pipe", NULL);
    CALL(listen(pi, 1)); line("listen_pipe", NULL);
    CALL(send(pi, "x", 1, 0)); line("send_pipe", NULL);
    CALL(recv(pi, buf, 1, MSG_DONTWAIT)); line("recv_pipe", NULL);
    CALL(setsockopt(pi, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one)); line("setsockopt_pipe", NULL);
    vl = sizeof v;
    CALL(getsockopt(pi, SOL_SOCKET, SO_TYPE, &v, &vl)); line("getsockopt_pipe", NULL);
    CALL(accept(pi, NULL, NULL)); fdline("accept_pipe", -1, 1);
    CALL(connect(pi, (struct sockaddr *)&peer, sizeof peer)); line("connect_pipe", NULL);
    CALL(bind(pi, (struct sockaddr *)&a, sizeof a)); line("bind_pipe", NULL);
    CALL(shutdown(pi, SHUT_RDWR)); line("shutdown_pipe", NULL);

    /* Bad-descriptor sweep on -1 */
    vl = sizeof v;
    CALL(read(-1, buf, 1)); line("read_fd-1", NULL);
    CALL(write(-1, "x", 1)); line("write_fd-1", NULL);
    CALL(send(-1, "x", 1, 0)); line("send_fd-1", NULL);
    CALL(recv(-1, buf, 1, 0)); line("recv_fd-1", NULL);
    CALL(getsockopt(-1, SOL_SOCKET, SO_TYPE, &v, &vl)); line("getsockopt_fd-1", NULL);
    CALL(setsockopt(-1, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one)); line("setsockopt_fd-1", NULL);
    CALL(shutdown(-1, SHUT_RDWR)); line("shutdown_fd-1", NULL);
    CALL(listen(-1, 1)); line("listen_fd-1", NULL);
    CALL(accept(-1, NULL, NULL)); fdline("accept_fd-1", -1, 1);
    CALL(connect(-1, (struct sockaddr *)&peer, sizeof peer)); line("connect_fd-1", NULL);
    CALL(bind(-1, (struct sockaddr *)&a, sizeof a)); line("bind_fd-1", NULL);

    /* shutdown and close, last: they change state */
    CALL(shutdown(c, 7)); line("shutdown_c_how7", NULL);
    CALL(shutdown(bad, SHUT_RDWR)); line("shutdown_badfd", NULL);
    CALL(shutdown(t, SHUT_RDWR)); line("shutdown_t_unconnected", NULL);
    CALL(shutdown(l, SHUT_WR)); line("shutdown_l_wr", NULL);
    CALL(accept(l, NULL, NULL)); fdline("accept_l_after_shutdown_wr", -1, 1);
    CALL(close(bad)); line("close_badfd", NULL);
    CALL(close(-1)); line("close_fd-1", NULL);
    CALL(dup(u)); fdline("dup_u", -1, 0);
    d = (int)R;
    CALL(close(d)); line("close_dup_u", NULL);
    CALL(close(d)); line("close_dup_u_again", NULL);
    CALL(close(t)); line("close_t", NULL);
    CALL(close(t)); line("close_t_again", NULL);

    /* MSG_PEEK copies and leaves the data queued. */
    {
        char pk[8] = {0};
        CALL(recv(c, pk, 3, MSG_PEEK));
        printf("recv_c_peek: r=%ld errno=%s data=%s\n", R, R == -1 ? ename(E) : "0", pk);
        CALL(recv(c, pk, sizeof pk, MSG_PEEK | MSG_DONTWAIT));
        printf("recv_c_peek_all: r=%ld errno=%s\n", R, R == -1 ? ename(E) : "0");
    }

    /* Nothing lost: "hello" is still queued on c. */
    ssize_t n = read(c, buf, 5);
    if (n < 0)
        printf("data: lost (%s)\n", ename(errno));
    else
        printf("data: %.*s\n", (int)n, buf);
    if (write(c, "bye\n", 4) != 4) die("write bye");
    close(ep);
    close(file);
    close(pfd[0]);
    close(pfd[1]);
    close(c);
    close(u);
    close(l);
    printf("done\n");
    fflush(stdout);
    return 0;
}
