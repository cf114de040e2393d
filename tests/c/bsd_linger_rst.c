/* A plain BSD-sockets server, compiled without any provider header: under `provider run` its
 * sockets are the provider's. Accepts one connection, waits for data with poll(2), echoes
 * "hello" back, then closes with SO_LINGER {1, 0}: exactly one RST on the wire, and the kernel
 * client's recv fails with ECONNRESET.  usage: bsd_linger_rst PORT */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <fcntl.h>
#include <sys/ioctl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void die(const char *what) {
    printf("error %s: %s\n", what, strerror(errno));
    fflush(stdout);
    exit(1);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s PORT\n", argv[0]);
        return 2;
    }
    int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (l < 0) die("socket");
    int one = 1;
    if (setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0) die("SO_REUSEADDR");
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons((unsigned short)atoi(argv[1]));
    a.sin_addr.s_addr = htonl(INADDR_ANY);
    if (bind(l, (struct sockaddr *)&a, sizeof a) < 0) die("bind");
    if (listen(l, 16) < 0) die("listen");
    /* Misuse gets the errno Linux gives, and the socket keeps working. */
    if (bind(l, NULL, sizeof a) != -1 || errno != EFAULT) die("bind(NULL) not EFAULT");
    if (setsockopt(l, SOL_SOCKET, SO_LINGER, &one, 1) != -1 || errno != EINVAL) die("short SO_LINGER not EINVAL");
    /* recv on a listening socket: ENOTCONN, as Linux. */
    char tmp[4];
    if (recv(l, tmp, sizeof tmp, 0) != -1 || errno != ENOTCONN) die("recv on listener not ENOTCONN");
    if (accept4(l, NULL, NULL, 0x7fff0000) != -1 || errno != EINVAL) die("accept4 bad flags not EINVAL");
    socklen_t nl = sizeof a;
    if (getsockname(l, NULL, &nl) != -1 || errno != EFAULT) die("getsockname(NULL) not EFAULT");
    struct sockaddr_in me;
    nl = sizeof me;
    if (getsockname(l, (struct sockaddr *)&me, &nl) < 0 || ntohs(me.sin_port) != (unsigned short)atoi(argv[1]))
        die("getsockname port");
    if (fcntl(l, F_GETFL) & O_NONBLOCK) die("listener nonblocking by default");
    printf("ready\n");
    fflush(stdout);

    struct sockaddr_in peer;
    socklen_t plen = sizeof peer;
    int c = accept(l, (struct sockaddr *)&peer, &plen);
    if (c < 0) die("accept");
    if (setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) < 0) die("TCP_NODELAY");
    if (send(c, NULL, 5, 0) != -1 || errno != EFAULT) die("send(NULL, 5) not EFAULT");
    if (setsockopt(c, SOL_SOCKET, SO_KEEPALIVE, NULL, sizeof one) != -1 || errno != EFAULT)
        die("setsockopt(NULL) not EFAULT");
    if (shutdown(c, 7) != -1 || errno != EINVAL) die("shutdown(7) not EINVAL");
    if (ioctl(c, FIONREAD, NULL) != -1 || errno != EFAULT) die("FIONREAD NULL not EFAULT");
    int type = 0;
    socklen_t tl = sizeof type;
    if (getsockopt(c, SOL_SOCKET, SO_TYPE, &type, &tl) < 0 || type != SOCK_STREAM) die("SO_TYPE");
    /* A nonblocking read with nothing queued yet, then back to blocking. */
    if (fcntl(c, F_SETFL, fcntl(c, F_GETFL) | O_NONBLOCK) < 0) die("F_SETFL");
    if (!(fcntl(c, F_GETFL) & O_NONBLOCK)) die("F_GETFL after set");
    if (fcntl(c, F_SETFL, fcntl(c, F_GETFL) & ~O_NONBLOCK) < 0) die("F_SETFL clear");
    struct pollfd p = {.fd = c, .events = POLLIN};
    int n = poll(&p, 1, 10000);
    if (n != 1 || !(p.revents & POLLIN)) die("poll");
    char buf[64];
    ssize_t got = read(c, buf, sizeof buf);
    if (got <= 0) die("read");
    if (write(c, buf, (size_t)got) != got) die("write");
    printf("echoed %zd from %s\n", got, inet_ntoa(peer.sin_addr));
    fflush(stdout);
    /* Wait for the client's "close now". */
    got = read(c, buf, sizeof buf);
    if (got <= 0) die("read 2");
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    if (setsockopt(c, SOL_SOCKET, SO_LINGER, &lg, sizeof lg) < 0) die("SO_LINGER");
    struct linger back;
    socklen_t blen = sizeof back;
    if (getsockopt(c, SOL_SOCKET, SO_LINGER, &back, &blen) < 0 || back.l_onoff != 1 || back.l_linger != 0)
        die("getsockopt SO_LINGER");
    if (close(c) < 0) die("close");
    if (close(c) != -1 || errno != EBADF) die("second close not EBADF");
    printf("reset\n");
    fflush(stdout);
    close(l);
    return 0;
}
