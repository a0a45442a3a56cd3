/*
 * c_epoll_echo: the reference row of the benchmark tables, the physical limit
 * of an echo server on this machine.  One thread, non-blocking sockets,
 * level-triggered epoll, no allocation per request; it does what the Python
 * echo servers do (echo complete lines, keep a partial line until its '\n'
 * arrives) with nothing in between the system calls.
 *
 *     c_epoll_echo HOST:PORT          TCP line echo
 *     c_epoll_echo HOST:PORT --udp    UDP datagram echo
 *
 * HOST:PORT as the Python servers take it ("[::1]:0" for IPv6; port 0 picks
 * a free port).  It follows the servers' contract (servers/_common.py):
 * prints "READY <port>" once listening, serves until SIGTERM or SIGINT, then
 * prints one "EXIT {json}" line with its getrusage and exits with status 0.
 * Built by the runner (harness.build_c) into benchmarks/bin/ and started
 * through servers/c_epoll_echo.py, which execs it.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#define READ_SIZE 65536
#define MAX_EVENTS 256
#define MAX_LINE (1 << 20) /* a longer line without '\n' closes the connection */

/* One TCP connection.  Both buffers stay NULL while every line arrives whole
 * and is written at once, which is the common case: a held connection costs
 * this struct and the kernel's socket. */
struct conn {
    int fd;
    char *pending; /* a partial line, waiting for its '\n' */
    size_t plen, pcap;
    char *out; /* echoed bytes the socket did not take yet */
    size_t olen, ooff, ocap;
};

static volatile sig_atomic_t stopping;
static char rbuf[READ_SIZE];
static int epfd;
static int spare_fd = -1; /* given up to accept (and close) a connection when out of descriptors */

static void on_signal(int signum) {
    (void)signum;
    stopping = 1;
}

static void die(const char *what) {
    fprintf(stderr, "c_epoll_echo: %s: %s\n", what, strerror(errno));
    exit(1);
}

static int grow(char **buf, size_t *cap, size_t need) {
    if (need <= *cap)
        return 0;
    size_t cap2 = *cap ? *cap : 256;
    while (cap2 < need)
        cap2 *= 2;
    char *p = realloc(*buf, cap2);
    if (!p)
        return -1;
    *buf = p;
    *cap = cap2;
    return 0;
}

static void close_conn(struct conn *c) {
    close(c->fd); /* also removes it from the epoll set */
    free(c->pending);
    free(c->out);
    free(c);
}

static void set_events(struct conn *c, uint32_t events) {
    struct epoll_event ev = {.events = events, .data.ptr = c};
    if (epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev) < 0)
        die("epoll_ctl(MOD)");
}

/* Send what is queued in c->out; 1: all sent, 0: the socket is full, -1: error. */
static int flush_out(struct conn *c) {
    while (c->ooff < c->olen) {
        ssize_t n = send(c->fd, c->out + c->ooff, c->olen - c->ooff, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return (errno == EAGAIN || errno == EWOULDBLOCK) ? 0 : -1;
        }
        c->ooff += (size_t)n;
    }
    c->olen = c->ooff = 0;
    return 1;
}

/* Echo data[0:len]: send it now, keep what the socket does not take.
 * 1: all sent, 0: some queued (the caller waits for EPOLLOUT), -1: error. */
static int echo(struct conn *c, const char *data, size_t len) {
    size_t off = 0;
    while (off < len) {
        ssize_t n = send(c->fd, data + off, len - off, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                return -1;
            break;
        }
        off += (size_t)n;
    }
    if (off == len)
        return 1;
    if (grow(&c->out, &c->ocap, len - off) < 0)
        return -1;
    memcpy(c->out, data + off, len - off);
    c->olen = len - off;
    c->ooff = 0;
    return 0;
}

/* Echo the complete lines of data[0:len] and keep the rest as c->pending.
 * Returns what echo() returns, 1 when there was no complete line. */
static int take(struct conn *c, const char *data, size_t len) {
    const char *nl = memrchr(data, '\n', len);
    if (c->plen) {
        if (c->plen + len > MAX_LINE || grow(&c->pending, &c->pcap, c->plen + len) < 0)
            return -1;
        memcpy(c->pending + c->plen, data, len);
        c->plen += len;
        if (!nl)
            return 1;
        size_t end = (size_t)((const char *)memrchr(c->pending, '\n', c->plen) - c->pending) + 1;
        int rc = echo(c, c->pending, end);
        memmove(c->pending, c->pending + end, c->plen - end);
        c->plen -= end;
        return rc;
    }
    size_t end = nl ? (size_t)(nl - data) + 1 : 0;
    int rc = end ? echo(c, data, end) : 1;
    if (rc >= 0 && end < len) {
        if (len - end > MAX_LINE || grow(&c->pending, &c->pcap, len - end) < 0)
            return -1;
        memcpy(c->pending, data + end, len - end);
        c->plen = len - end;
    }
    return rc;
}

static void on_readable(struct conn *c) {
    ssize_t n = recv(c->fd, rbuf, sizeof rbuf, 0);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
            return;
        close_conn(c);
        return;
    }
    if (n == 0) { /* EOF: the client is done (a partial line is dropped, as readline() would) */
        close_conn(c);
        return;
    }
    int rc = take(c, rbuf, (size_t)n);
    if (rc < 0)
        close_conn(c);
    else if (rc == 0) /* the client does not read: stop reading until it does */
        set_events(c, EPOLLOUT);
}

static void on_writable(struct conn *c) {
    int rc = flush_out(c);
    if (rc < 0)
        close_conn(c);
    else if (rc == 1)
        set_events(c, EPOLLIN);
}

static void accept_all(int lfd) {
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if ((errno == EMFILE || errno == ENFILE) && spare_fd >= 0) {
                /* out of descriptors: take the connection and close it rather
                 * than spin on a listener that stays readable */
                close(spare_fd);
                fd = accept(lfd, NULL, NULL);
                if (fd >= 0)
                    close(fd);
                spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
                fprintf(stderr, "c_epoll_echo: out of file descriptors, a connection was closed\n");
                continue;
            }
            return; /* EAGAIN: accepted everything queued */
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one); /* as asyncio and uvloop do */
        struct conn *c = calloc(1, sizeof *c);
        if (!c) {
            close(fd);
            continue;
        }
        c->fd = fd;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
            close(fd);
            free(c);
        }
    }
}

static void udp_echo_all(int fd) {
    struct sockaddr_storage peer;
    for (;;) {
        socklen_t plen = sizeof peer;
        ssize_t n = recvfrom(fd, rbuf, sizeof rbuf, 0, (struct sockaddr *)&peer, &plen);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return; /* EAGAIN: nothing left; other errors (ICMP) concern one datagram */
        }
        /* a full send buffer drops the reply, as it would drop a datagram */
        sendto(fd, rbuf, (size_t)n, 0, (struct sockaddr *)&peer, plen);
    }
}

static int parse_address(const char *text, struct sockaddr_storage *ss, socklen_t *len) {
    char host[256];
    const char *colon;
    memset(ss, 0, sizeof *ss);
    if (text[0] == '[') {
        const char *close_br = strstr(text, "]:");
        if (!close_br || (size_t)(close_br - text - 1) >= sizeof host)
            return -1;
        memcpy(host, text + 1, (size_t)(close_br - text - 1));
        host[close_br - text - 1] = 0;
        colon = close_br + 1;
    } else {
        colon = strrchr(text, ':');
        if (!colon || colon == text || (size_t)(colon - text) >= sizeof host)
            return -1;
        memcpy(host, text, (size_t)(colon - text));
        host[colon - text] = 0;
    }
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (*end || port < 0 || port > 65535)
        return -1;
    struct sockaddr_in *v4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)port);
        *len = sizeof *v4;
    } else if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)port);
        *len = sizeof *v6;
    } else {
        return -1;
    }
    return 0;
}

static void print_usage(const char *who, const struct rusage *ru, const char *tail) {
    printf("\"%s\": {\"utime\": %ld.%06ld, \"stime\": %ld.%06ld, \"maxrss_kib\": %ld}%s", who,
           (long)ru->ru_utime.tv_sec, (long)ru->ru_utime.tv_usec, (long)ru->ru_stime.tv_sec,
           (long)ru->ru_stime.tv_usec, ru->ru_maxrss, tail);
}

int main(int argc, char **argv) {
    if (argc < 2 || (argc == 3 && strcmp(argv[2], "--udp") != 0) || argc > 3) {
        fprintf(stderr, "usage: %s HOST:PORT [--udp]\n", argv[0]);
        return 2;
    }
    int udp = argc == 3;
    struct sockaddr_storage addr;
    socklen_t alen;
    if (parse_address(argv[1], &addr, &alen) < 0) {
        fprintf(stderr, "c_epoll_echo: bad listen address '%s', expected HOST:PORT\n", argv[1]);
        return 2;
    }

    /* hold_10000 needs 10,000 descriptors; the runner raises the limits, this covers a start by hand */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }

    /* SIGTERM/SIGINT are blocked except inside epoll_pwait, so a signal
     * cannot slip in between the check of `stopping` and the wait */
    sigset_t blocked, waitmask;
    sigemptyset(&blocked);
    sigaddset(&blocked, SIGTERM);
    sigaddset(&blocked, SIGINT);
    sigprocmask(SIG_BLOCK, &blocked, &waitmask);
    sigdelset(&waitmask, SIGTERM);
    sigdelset(&waitmask, SIGINT);
    struct sigaction sa = {.sa_handler = on_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    int lfd = socket(addr.ss_family, (udp ? SOCK_DGRAM : SOCK_STREAM) | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (lfd < 0)
        die("socket");
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(lfd, (struct sockaddr *)&addr, alen) < 0)
        die("bind");
    if (!udp && listen(lfd, 4096) < 0) /* the kernel caps it at net.core.somaxconn */
        die("listen");
    spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);

    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0)
        die("epoll_create1");
    /* the listener's data.ptr is NULL: that is how its events are told apart */
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, lfd, &ev) < 0)
        die("epoll_ctl(ADD)");

    struct sockaddr_storage bound;
    socklen_t blen = sizeof bound;
    if (getsockname(lfd, (struct sockaddr *)&bound, &blen) < 0)
        die("getsockname");
    int port = ntohs(bound.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&bound)->sin6_port
                                                 : ((struct sockaddr_in *)&bound)->sin_port);
    printf("READY %d\n", port);
    fflush(stdout);

    struct epoll_event events[MAX_EVENTS];
    while (!stopping) {
        int n = epoll_pwait(epfd, events, MAX_EVENTS, -1, &waitmask);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_pwait");
        }
        for (int i = 0; i < n; i++) {
            struct conn *c = events[i].data.ptr;
            if (!c) {
                if (udp)
                    udp_echo_all(lfd);
                else
                    accept_all(lfd);
            } else if (events[i].events & EPOLLOUT) {
                on_writable(c);
            } else {
                on_readable(c); /* EPOLLIN, and EPOLLHUP/EPOLLERR, which recv() reports */
            }
        }
    }

    /* the open connections are closed by exit(), as the kernel closes any process's */
    struct rusage self, children;
    getrusage(RUSAGE_SELF, &self);
    getrusage(RUSAGE_CHILDREN, &children);
    printf("EXIT {");
    print_usage("self", &self, ", ");
    print_usage("children", &children, ", ");
    printf("\"server\": \"c_epoll_echo%s\"}\n", udp ? " --udp" : "");
    fflush(stdout);
    return 0;
}
