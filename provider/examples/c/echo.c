/*
 * echo.c — the provider's C ABI (include/provider.h) end to end: a TCP echo server and a client
 * connection closed with a reset (SO_LINGER {1, 0}), all through the WSP calls.
 *
 * Build (from the workspace root, after `cargo build -p provider`, which makes
 * target/debug/libprovider.so):
 *
 *   gcc -Wall -Wextra -O2 -I provider/include provider/examples/c/echo.c \
 *       -L target/debug -lprovider -Wl,-rpath,"$PWD/target/debug" -o target/debug/echo-c
 *
 * (-rpath records where libprovider.so is, so no LD_LIBRARY_PATH is needed; for a release
 * build use target/release.) Run as root inside the network namespace that owns IFACE:
 *
 *   echo-c IFACE LISTEN_PORT PEER_IPV4 PEER_PORT
 *
 * 1. provider_start(IFACE); listen on 0.0.0.0:LISTEN_PORT; print "ready".
 * 2. Accept one connection and echo it (WSPRecv / WSPSend) until the peer closes; print
 *    "echoed N".
 * 3. Connect to PEER_IPV4:PEER_PORT, send "hello", wait for any reply, then set SO_LINGER
 *    {1, 0} and WSPCloseSocket: the connection is reset, the peer's recv fails with
 *    ECONNRESET. Print "reset".
 * 4. provider_stop().
 *
 * provider.h uses the Windows names and values (struct sockaddr_in with AF_INET6 = 23, …), so
 * this file includes no system socket header; ports go in network byte order (be16 below).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "provider.h"

static uint16_t be16(uint16_t v) { return (uint16_t)((v << 8) | (v >> 8)); }

static int parse_ipv4(const char *s, uint32_t *out) {
    unsigned a, b, c, d;
    if (sscanf(s, "%u.%u.%u.%u", &a, &b, &c, &d) != 4 || a > 255 || b > 255 || c > 255 || d > 255)
        return -1;
    unsigned char bytes[4] = {(unsigned char)a, (unsigned char)b, (unsigned char)c, (unsigned char)d};
    memcpy(out, bytes, 4); /* network byte order, as s_addr expects */
    return 0;
}

static void die(const char *what, int err) {
    fprintf(stderr, "echo-c: %s failed: Winsock error %d\n", what, err);
    provider_stop();
    exit(1);
}

/* Send all of buf[0..len) (a blocking WSPSend sends everything, but be strict). */
static void send_all(SOCKET s, const char *buf, DWORD len) {
    int err = 0;
    while (len > 0) {
        WSABUF wb = {len, (char *)buf};
        DWORD sent = 0;
        if (WSPSend(s, &wb, 1, &sent, 0, NULL, NULL, NULL, &err) == SOCKET_ERROR)
            die("WSPSend", err);
        buf += sent;
        len -= sent;
    }
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s IFACE LISTEN_PORT PEER_IPV4 PEER_PORT\n", argv[0]);
        return 2;
    }
    int err = 0;
    if (provider_start(argv[1], &err) == SOCKET_ERROR)
        die("provider_start", err);

    /* 1. Listen. */
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
    printf("ready\n");
    fflush(stdout);

    /* 2. Echo one connection. */
    struct sockaddr_in from;
    int fromlen = sizeof from;
    SOCKET cs = WSPAccept(ls, (struct sockaddr *)&from, &fromlen, NULL, 0, &err);
    if (cs == INVALID_SOCKET)
        die("WSPAccept", err);
    static char buf[64 * 1024];
    unsigned long long total = 0;
    for (;;) {
        WSABUF wb = {sizeof buf, buf};
        DWORD got = 0, flags = 0;
        if (WSPRecv(cs, &wb, 1, &got, &flags, NULL, NULL, NULL, &err) == SOCKET_ERROR)
            die("WSPRecv", err);
        if (got == 0)
            break; /* graceful close by the peer */
        send_all(cs, buf, got);
        total += got;
    }
    if (WSPCloseSocket(cs, &err) == SOCKET_ERROR || WSPCloseSocket(ls, &err) == SOCKET_ERROR)
        die("WSPCloseSocket", err);
    printf("echoed %llu\n", total);
    fflush(stdout);

    /* 3. A client connection, closed with a reset. */
    struct sockaddr_in peer;
    memset(&peer, 0, sizeof peer);
    peer.sin_family = AF_INET;
    peer.sin_port = be16((uint16_t)atoi(argv[4]));
    if (parse_ipv4(argv[3], &peer.sin_addr.s_addr) != 0) {
        fprintf(stderr, "echo-c: bad IPv4 address %s\n", argv[3]);
        provider_stop();
        return 2;
    }
    SOCKET c = WSPSocket(AF_INET, SOCK_STREAM, IPPROTO_TCP, NULL, 0, 0, &err);
    if (c == INVALID_SOCKET)
        die("WSPSocket", err);
    if (WSPConnect(c, (const struct sockaddr *)&peer, sizeof peer, NULL, NULL, NULL, NULL, &err) ==
        SOCKET_ERROR)
        die("WSPConnect", err);
    send_all(c, "hello", 5);
    {
        char reply[16];
        WSABUF wb = {sizeof reply, reply};
        DWORD got = 0, flags = 0;
        if (WSPRecv(c, &wb, 1, &got, &flags, NULL, NULL, NULL, &err) == SOCKET_ERROR)
            die("WSPRecv (client)", err);
    }
    struct linger lg = {1, 0}; /* hard close: RST, no FIN */
    if (WSPSetSockOpt(c, SOL_SOCKET, SO_LINGER, (const char *)&lg, sizeof lg, &err) == SOCKET_ERROR)
        die("WSPSetSockOpt(SO_LINGER)", err);
    if (WSPCloseSocket(c, &err) == SOCKET_ERROR)
        die("WSPCloseSocket (client)", err);
    printf("reset\n");
    fflush(stdout);

    provider_stop();
    return 0;
}
