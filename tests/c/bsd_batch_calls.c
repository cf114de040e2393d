/* The less common BSD calls on a provider socket, compiled without any provider header:
 * ppoll, pselect, epoll_pwait2, recvmmsg, sendmmsg, sendfile — and their misuse errnos.
 * Accepts one connection; waits for "ping" with each readiness call in turn; answers with two
 * messages in one sendmmsg ("po", "ng"); reads "file?" with recvmmsg; sends a file with
 * sendfile; closes. Then an unbound UDP socket sends two datagrams with one sendmmsg to the
 * peer's UDP echo (198.18.0.2), says which file backs it, peeks at the first echo and takes
 * both with recvmmsg.  usage: bsd_batch_calls PORT FILE UDP_ECHO_PORT */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/select.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static void die(const char *what) {
    printf("error %s: %s\n", what, strerror(errno));
    fflush(stdout);
    exit(1);
}

static void expect_errno(int r, int want, const char *what) {
    if (r != -1 || errno != want) {
        printf("error %s: got %d errno %d (%s), want errno %d\n", what, r, errno, strerror(errno), want);
        fflush(stdout);
        exit(1);
    }
}

static void read_exact(int c, char *buf, size_t n) {
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(c, buf + got, n - got);
        if (r <= 0) die("read");
        got += (size_t)r;
    }
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s PORT FILE UDP_ECHO_PORT\n", argv[0]);
        return 2;
    }
    int l = socket(AF_INET, SOCK_STREAM, 0);
    if (l < 0) die("socket");
    int one = 1;
    if (setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0) die("SO_REUSEADDR");
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons((unsigned short)atoi(argv[1]));
    a.sin_addr.s_addr = htonl(INADDR_ANY);
    if (bind(l, (struct sockaddr *)&a, sizeof a) < 0) die("bind");
    if (listen(l, 16) < 0) die("listen");

    /* Misuse: the errnos Linux gives. */
    struct timespec bad = {.tv_sec = 0, .tv_nsec = 2000000000L};
    struct pollfd lp = {.fd = l, .events = POLLIN};
    expect_errno(ppoll(&lp, 1, &bad, NULL), EINVAL, "ppoll with tv_nsec out of range");
    fd_set rs;
    FD_ZERO(&rs);
    FD_SET(l, &rs);
    expect_errno(pselect(l + 1, &rs, NULL, NULL, &bad, NULL), EINVAL, "pselect with a bad timespec");
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) die("epoll_create1");
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 7};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, l, &ev) < 0) die("epoll_ctl");
    struct epoll_event out[4];
    expect_errno(epoll_pwait2(ep, out, 4, &bad, NULL), EINVAL, "epoll_pwait2 with a bad timespec");
    expect_errno(epoll_pwait2(ep, out, 0, NULL, NULL), EINVAL, "epoll_pwait2 with maxevents 0");
    struct timespec zero = {0, 0};
    if (epoll_pwait2(ep, out, 4, &zero, NULL) != 0) die("epoll_pwait2 on an idle listener");
    if (ppoll(&lp, 1, &zero, NULL) != 0) die("ppoll on an idle listener");
    expect_errno(sendmmsg(-1, NULL, 1, 0), EBADF, "sendmmsg on fd -1");
    expect_errno(recvmmsg(-1, NULL, 1, 0, NULL), EBADF, "recvmmsg on fd -1");
    int file = open(argv[2], O_RDONLY | O_CLOEXEC);
    if (file < 0) die("open FILE");
    struct stat sb;
    if (fstat(file, &sb) < 0) die("fstat");
    printf("ready\n");
    fflush(stdout);

    /* Accept through epoll_pwait2 with a signal mask. */
    sigset_t mask;
    sigemptyset(&mask);
    struct timespec ten = {10, 0};
    int n = epoll_pwait2(ep, out, 4, &ten, &mask);
    if (n != 1 || out[0].data.u64 != 7 || !(out[0].events & EPOLLIN)) die("epoll_pwait2 did not report the listener");
    int c = accept4(l, NULL, NULL, SOCK_CLOEXEC);
    if (c < 0) die("accept4");
    expect_errno(sendfile(c, -1, NULL, 10), EBADF, "sendfile from fd -1");

    /* "ping" arrives in pieces: wait for each with a different call. */
    char buf[64];
    struct pollfd cp = {.fd = c, .events = POLLIN};
    if (ppoll(&cp, 1, &ten, &mask) != 1 || !(cp.revents & POLLIN)) die("ppoll did not report data");
    read_exact(c, buf, 2);
    FD_ZERO(&rs);
    FD_SET(c, &rs);
    if (pselect(c + 1, &rs, NULL, NULL, &ten, &mask) != 1 || !FD_ISSET(c, &rs)) die("pselect did not report data");
    read_exact(c, buf + 2, 2);
    if (memcmp(buf, "ping", 4) != 0) die("not ping");

    /* Two messages in one sendmmsg. */
    struct iovec iov[2] = {{.iov_base = "po", .iov_len = 2}, {.iov_base = "ng", .iov_len = 2}};
    struct mmsghdr mm[2];
    memset(mm, 0, sizeof mm);
    mm[0].msg_hdr.msg_iov = &iov[0];
    mm[0].msg_hdr.msg_iovlen = 1;
    mm[1].msg_hdr.msg_iov = &iov[1];
    mm[1].msg_hdr.msg_iovlen = 1;
    if (sendmmsg(c, mm, 2, 0) != 2 || mm[0].msg_len != 2 || mm[1].msg_len != 2) die("sendmmsg");

    /* "file?" through recvmmsg (one message, waiting for one). */
    struct iovec riov = {.iov_base = buf, .iov_len = 5};
    struct mmsghdr rm;
    memset(&rm, 0, sizeof rm);
    rm.msg_hdr.msg_iov = &riov;
    rm.msg_hdr.msg_iovlen = 1;
    size_t have = 0;
    while (have < 5) {
        riov.iov_base = buf + have;
        riov.iov_len = 5 - have;
        if (recvmmsg(c, &rm, 1, MSG_WAITFORONE, NULL) != 1) die("recvmmsg");
        have += rm.msg_len;
    }
    if (memcmp(buf, "file?", 5) != 0) die("not file?");

    /* The file through sendfile, from an offset of 0 kept by the caller. */
    off_t off = 0;
    while (off < sb.st_size) {
        ssize_t s = sendfile(c, file, &off, (size_t)(sb.st_size - off));
        if (s <= 0) die("sendfile");
    }
    if (lseek(file, 0, SEEK_CUR) != 0) die("sendfile with an offset moved the file position");
    close(file);

    /* An unbound UDP socket: its first sendmmsg (to the peer's echo) decides whose it is. */
    int u = socket(AF_INET, SOCK_DGRAM, 0);
    if (u < 0) die("socket udp");
    struct sockaddr_in echo = {0};
    echo.sin_family = AF_INET;
    echo.sin_port = htons((unsigned short)atoi(argv[3]));
    inet_pton(AF_INET, "198.18.0.2", &echo.sin_addr);
    struct iovec uiov[2] = {{.iov_base = "u1", .iov_len = 2}, {.iov_base = "u2", .iov_len = 2}};
    struct mmsghdr um[2];
    memset(um, 0, sizeof um);
    for (int i = 0; i < 2; i++) {
        um[i].msg_hdr.msg_name = &echo;
        um[i].msg_hdr.msg_namelen = sizeof echo;
        um[i].msg_hdr.msg_iov = &uiov[i];
        um[i].msg_hdr.msg_iovlen = 1;
    }
    if (sendmmsg(u, um, 2, 0) != 2) die("sendmmsg udp");
    /* Which file backs the descriptor: a kernel socket, or the provider's doorbell eventfd. */
    char link[64], target[64] = {0};
    snprintf(link, sizeof link, "/proc/self/fd/%d", u);
    if (readlink(link, target, sizeof target - 1) < 0) die("readlink");
    printf("udp backing %s\n", strncmp(target, "socket:", 7) == 0 ? "socket" : target);
    /* MSG_PEEK leaves the first echo queued; recvmmsg then takes both. */
    struct pollfd upfd = {.fd = u, .events = POLLIN};
    if (poll(&upfd, 1, 10000) != 1) die("no echo");
    char peek[8] = {0};
    if (recv(u, peek, sizeof peek, MSG_PEEK) != 2 || memcmp(peek, "u1", 2) != 0) die("MSG_PEEK udp");
    char ub[2][8];
    struct iovec riv[2] = {{.iov_base = ub[0], .iov_len = 8}, {.iov_base = ub[1], .iov_len = 8}};
    struct mmsghdr urm[2];
    memset(urm, 0, sizeof urm);
    for (int i = 0; i < 2; i++) {
        urm[i].msg_hdr.msg_iov = &riv[i];
        urm[i].msg_hdr.msg_iovlen = 1;
    }
    int ugot = 0;
    while (ugot < 2) {
        if (poll(&upfd, 1, 10000) != 1) die("no second echo");
        int r = recvmmsg(u, urm + ugot, (unsigned)(2 - ugot), MSG_DONTWAIT, NULL);
        if (r < 0) die("recvmmsg udp");
        ugot += r;
    }
    if (urm[0].msg_len != 2 || memcmp(ub[0], "u1", 2) != 0 || urm[1].msg_len != 2 || memcmp(ub[1], "u2", 2) != 0)
        die("udp echoes");
    close(u);
    if (close(c) < 0) die("close");
    close(ep);
    close(l);
    printf("done\n");
    fflush(stdout);
    return 0;
}
