/*
 * loadgen: a small epoll load generator for echo servers (sockserve benchmarks).
 *
 * Single thread, non-blocking sockets, level-triggered epoll.  Every loop is
 * bounded in count (--max-requests) and in time (--duration, --hard-timeout,
 * plus an alarm() as a last resort), and only loopback or unix-socket targets
 * are accepted.
 *
 * Scenarios (echo protocol: the server sends back every byte it receives;
 * TCP messages are S-1 bytes of 'x' followed by '\n' so line-based echo
 * handlers work):
 *   pingpong  C persistent connections, each sends S bytes and waits for the
 *             full S-byte echo before sending the next message.  The
 *             connections are opened and answered once (the setup ramp)
 *             before the warmup starts.
 *   connect   connection per request with C in flight: connect, send one line,
 *             read the echo, close, repeat.  Latency includes the connect.
 *   hold      open C connections and keep them all open, then do one
 *             ping-pong round through every connection (reports how many were
 *             established and answered), then pingpong over the answered ones.
 *
 * Setup ramp (pingpong, hold): at most --connect-batch connections are
 * "opening" at once, i.e. connecting or waiting for their first echo.  A
 * burst of thousands of SYNs would otherwise overflow small accept backlogs
 * (the stdlib's is 5) and measure SYN-retransmission back-off rather than the
 * server; the connect scenario is the one that measures connection handling.
 *   udp       C clients each send an S-byte datagram and wait for the echo,
 *             with a per-datagram timeout (a loss) and a sequence number so
 *             late replies are recognised.
 *   slowloris C "normal" connections ping-pong as in pingpong while --slow N
 *             "slow" connections attack the server: each sends one byte ('x',
 *             never a newline, so a line handler never gets a request) every
 *             --slow-interval seconds, the sends of the N connections spread
 *             evenly over the interval.  The normal connections are opened
 *             first (the setup ramp), then the slow ones, --slow-rate per
 *             second, while the normal ones ping-pong unmeasured (a slow
 *             connection counts as established once its TCP handshake is
 *             done, whether or not the server has accept()ed it; the ramp
 *             ends when every one is established or failed, or after
 *             --hold-timeout), then warmup and measure.
 *             During the measured window a new "probe" connection is started
 *             every --probe-interval-ms: connect, send one S-byte line, expect
 *             its echo within --probe-timeout-ms, close.  With --slow 0 it is
 *             the same run unattacked.
 *
 * Output: one JSON object on stdout.  Latency is recorded in a log-linear
 * histogram (64 sub-buckets per power of two of nanoseconds, <1% error), so
 * memory does not grow with the number of requests.
 *
 * Build: gcc -O2 -o loadgen loadgen.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------------------------------------------ */
/* histogram                                                           */

#define HSUB_BITS 6
#define HSUB (1u << HSUB_BITS)
#define HBUCKETS ((64 - HSUB_BITS) * HSUB + 2 * HSUB)

typedef struct {
    uint64_t b[HBUCKETS];
    uint64_t count, min, max;
    double sum;
} hist_t;

static unsigned hidx(uint64_t v) {
    if (v < 2 * HSUB) return (unsigned)v;
    unsigned msb = 63u - (unsigned)__builtin_clzll(v);
    unsigned e = msb - HSUB_BITS;
    return e * HSUB + (unsigned)(v >> e);
}

static uint64_t hval(unsigned idx) {
    if (idx < 2 * HSUB) return idx;
    unsigned e = idx / HSUB - 1;
    uint64_t m = idx - (uint64_t)e * HSUB;
    uint64_t lo = m << e, hi = ((m + 1) << e) - 1;
    return lo + (hi - lo) / 2;
}

static void hadd(hist_t *h, uint64_t v) {
    h->b[hidx(v)]++;
    if (h->count == 0 || v < h->min) h->min = v;
    if (v > h->max) h->max = v;
    h->count++;
    h->sum += (double)v;
}

static uint64_t hpct(const hist_t *h, double p) {
    if (h->count == 0) return 0;
    uint64_t rank = (uint64_t)(p * (double)h->count + 0.999999);
    if (rank < 1) rank = 1;
    uint64_t acc = 0;
    for (unsigned i = 0; i < HBUCKETS; i++) {
        acc += h->b[i];
        if (acc >= rank) {
            uint64_t v = hval(i);
            if (v > h->max) v = h->max;
            if (v < h->min) v = h->min;
            return v;
        }
    }
    return h->max;
}

/* ------------------------------------------------------------------ */
/* configuration and state                                             */

enum { SC_PINGPONG, SC_CONNECT, SC_HOLD, SC_UDP, SC_SLOWLORIS, SC_COUNT };
static const char *SC_NAMES[] = {"pingpong", "connect", "hold", "udp", "slowloris"};

/* PH_ATTACK (slowloris: the slow connections opening while the normal ones
 * ping-pong unmeasured) sits before PH_WARMUP: code below compares phases */
enum { PH_SETUP, PH_SETUP_ROUND, PH_ATTACK, PH_WARMUP, PH_MEASURE, PH_DRAIN, PH_DONE };

enum { ST_FREE, ST_CONNECTING, ST_IDLE, ST_BUSY, ST_RETRY };

enum {
    E_REFUSED, E_CONNECT, E_ADDRNOTAVAIL, E_CONNECT_TIMEOUT, E_RESET, E_EOF,
    E_READ, E_WRITE, E_MISMATCH, E_TIMEOUT, E_UNEXPECTED, E_UNANSWERED,
    E_UDP_LOST, E_UDP_SEND, E_UNFINISHED, E_SOCKET, E_NKINDS
};
static const char *E_NAMES[] = {
    "connect_refused", "connect_other", "connect_addr_not_avail", "connect_timeout",
    "reset", "eof", "read_other", "write_other", "mismatch", "timeout",
    "unexpected_data", "unanswered", "udp_lost", "udp_send", "unfinished_at_end",
    "socket"};

typedef struct {
    int fd;
    int state;
    uint32_t sent, got;
    uint64_t t_start; /* ns, start of current request (or connect) */
    uint64_t retry_at;
    uint64_t seq;
    int measured;
    int want_out;
    int answered; /* first echo received during the setup ramp */
    int round_ok; /* hold: answered in the round over all held connections */
    int opening;  /* counted in `opening` (setup ramp) */
} conn_t;

/* slowloris: an attacking connection (index cfg.conns + i in epoll data) */
enum { SL_FREE, SL_CONNECTING, SL_OPEN, SL_DONE };
typedef struct {
    int fd;
    int state;
    uint64_t t_start;   /* connect started */
    uint64_t next_send; /* next byte due */
} slow_t;

/* slowloris: a new-connection probe (index cfg.conns + cfg.slow + i) */
typedef struct {
    int fd;
    int state; /* ST_FREE, ST_CONNECTING, ST_BUSY */
    uint32_t sent, got;
    uint64_t t_start; /* socket() call; latency includes the connect */
} probe_t;

static struct {
    int scenario;
    int conns;
    int slow;
    double slow_interval, slow_rate;
    double probe_interval_ms, probe_timeout_ms;
    uint32_t size;
    double duration, warmup, hard_timeout, hold_timeout;
    uint64_t max_requests;
    uint64_t timeout_ns;
    int connect_batch;
    int sync_stdin; /* wait for a line on stdin at the "held" and "done" markers */
    char target[512];
} cfg;

static struct sockaddr_storage addr;
static socklen_t addrlen;
static int family, is_unix;

static int ep = -1;
static conn_t *conns;
static char *msg;     /* the message, S bytes */
static char *scratch; /* read buffer */
static size_t scratch_len;

static int phase;
static uint64_t t_begin, warmup_end, measure_start, measure_end, drain_end, hard_end;
static uint64_t last_completion;
static uint64_t issued_measured, completed_measured, warmup_completed;
static uint64_t inflight;
static uint64_t errors[E_NKINDS];
static uint64_t udp_late;
static uint64_t bytes_sent, bytes_received;
static hist_t hist;
static const char *stopped_by = "duration";
static int opening; /* setup ramp: connections connecting or awaiting their first echo */
static int opened;  /* setup ramp: connections attempted */
static int established, answered, round_answered, attempted;
static double setup_s, round_s;

/* slowloris */
static slow_t *slows;
static probe_t *probes;
static int nprobes; /* probe slots: enough for every probe that can be in flight */
static uint64_t slow_interval_ns, probe_interval_ns, probe_timeout_ns;
static uint64_t attack_start, attack_end, probe_next;
static double attack_s;
static int slow_opened, slow_connecting, slow_established, slow_connect_failed, slow_connect_timeout;
static int slow_closed_by_server, slow_open_at_measure;
static uint64_t slow_bytes_sent, slow_unexpected_bytes;
static int probes_inflight;
static uint64_t probe_attempted, probe_answered, probe_connect_timeout, probe_no_answer, probe_refused,
    probe_reset, probe_eof, probe_mismatch, probe_other, probe_skipped, probe_unfinished;
static hist_t probe_hist;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void die(const char *m) {
    fprintf(stderr, "loadgen: %s\n", m);
    exit(2);
}

/* A phase marker on stderr (unbuffered).  With --sync-stdin, wait (up to 5 s)
 * for a line on stdin before going on, so that a harness can read the
 * server's state (/proc) while every connection is still open. */
static void marker(const char *name, int wait) {
    fprintf(stderr, "phase %s\n", name);
    if (!wait || !cfg.sync_stdin) return;
    struct epoll_event ev;
    int e = epoll_create1(EPOLL_CLOEXEC);
    if (e < 0) return;
    ev.events = EPOLLIN;
    ev.data.u64 = 0;
    if (epoll_ctl(e, EPOLL_CTL_ADD, 0, &ev) == 0 && epoll_wait(e, &ev, 1, 5000) == 1) {
        char c;
        while (read(0, &c, 1) == 1 && c != '\n') {
        }
    }
    close(e);
}

/* ------------------------------------------------------------------ */
/* target parsing: host:port, [v6]:port, or a unix socket path         */

static int is_loopback(const struct sockaddr *sa) {
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        return (ntohl(in->sin_addr.s_addr) >> 24) == 127;
    }
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        return IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr);
    }
    return 0;
}

static void parse_target(const char *t) {
    memset(&addr, 0, sizeof addr);
    if (strncmp(t, "unix:", 5) == 0 || t[0] == '/' || t[0] == '.') {
        const char *path = strncmp(t, "unix:", 5) == 0 ? t + 5 : t;
        struct sockaddr_un *un = (struct sockaddr_un *)&addr;
        if (strlen(path) >= sizeof un->sun_path) die("unix socket path too long");
        un->sun_family = AF_UNIX;
        strcpy(un->sun_path, path);
        addrlen = sizeof(struct sockaddr_un);
        family = AF_UNIX;
        is_unix = 1;
        return;
    }
    char host[256], port[32];
    const char *colon;
    if (t[0] == '[') {
        const char *end = strchr(t, ']');
        if (!end || end[1] != ':') die("bad target, expected [v6addr]:port");
        size_t n = (size_t)(end - t - 1);
        if (n >= sizeof host) die("bad target");
        memcpy(host, t + 1, n);
        host[n] = 0;
        colon = end + 1;
    } else {
        colon = strrchr(t, ':');
        if (!colon) die("bad target, expected host:port or a unix socket path");
        size_t n = (size_t)(colon - t);
        if (n >= sizeof host) die("bad target");
        memcpy(host, t, n);
        host[n] = 0;
    }
    snprintf(port, sizeof port, "%s", colon + 1);
    struct addrinfo hints, *res;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = cfg.scenario == SC_UDP ? SOCK_DGRAM : SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    if (getaddrinfo(host, port, &hints, &res) != 0 || !res) die("cannot resolve target");
    if (!is_loopback(res->ai_addr))
        die("refusing a non-loopback target: only 127.0.0.0/8, ::1 and unix sockets");
    memcpy(&addr, res->ai_addr, res->ai_addrlen);
    addrlen = res->ai_addrlen;
    family = res->ai_family;
    freeaddrinfo(res);
}

/* ------------------------------------------------------------------ */
/* connection helpers                                                  */

static void err(int kind) { errors[kind]++; }

static void set_events(conn_t *c, int idx, int out) {
    struct epoll_event ev;
    ev.events = EPOLLIN | (out ? EPOLLOUT : 0);
    ev.data.u32 = (uint32_t)idx;
    if (epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev) == 0) c->want_out = out;
}

static void close_conn(conn_t *c) {
    if (c->fd >= 0) close(c->fd);
    if ((c->state == ST_BUSY || (c->state == ST_CONNECTING && cfg.scenario == SC_CONNECT)) &&
        inflight > 0)
        inflight--;
    if (c->opening) {
        c->opening = 0;
        opening--;
    }
    c->fd = -1;
    c->state = ST_FREE;
    c->sent = c->got = 0;
    c->want_out = 0;
}

static int may_issue(void) {
    /* slowloris: the normal connections keep working (unmeasured) while the
     * slow ones open */
    if (phase == PH_WARMUP || phase == PH_ATTACK) return 1;
    if (phase == PH_MEASURE) return issued_measured < cfg.max_requests;
    return 0;
}

/* Open a socket and start a non-blocking connect.  Returns 0 on success
 * (state CONNECTING or IDLE), -1 on failure (error counted, state FREE). */
static int open_conn(int idx, uint64_t now) {
    conn_t *c = &conns[idx];
    int type = cfg.scenario == SC_UDP ? SOCK_DGRAM : SOCK_STREAM;
    int fd = socket(family, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        err(E_SOCKET);
        return -1;
    }
    if (!is_unix && type == SOCK_STREAM) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    c->fd = fd;
    c->sent = c->got = 0;
    c->t_start = now;
    c->want_out = 1;
    struct epoll_event ev;
    ev.events = EPOLLIN | EPOLLOUT;
    ev.data.u32 = (uint32_t)idx;
    int r = connect(fd, (struct sockaddr *)&addr, addrlen);
    if (r < 0 && errno != EINPROGRESS) {
        int e = errno;
        close(fd);
        c->fd = -1;
        c->state = ST_FREE;
        if (e == ECONNREFUSED) err(E_REFUSED);
        else if (e == EADDRNOTAVAIL) err(E_ADDRNOTAVAIL);
        else err(E_CONNECT); /* includes EAGAIN from a full unix backlog */
        return -1;
    }
    if (type == SOCK_DGRAM) ev.events = EPOLLIN;
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
        close(fd);
        c->fd = -1;
        c->state = ST_FREE;
        err(E_SOCKET);
        return -1;
    }
    if (type == SOCK_DGRAM) {
        c->want_out = 0;
        c->state = ST_IDLE;
    } else {
        c->state = ST_CONNECTING;
    }
    return 0;
}

static void schedule_retry(conn_t *c, uint64_t now, uint64_t delay_ns) {
    c->state = ST_RETRY;
    c->retry_at = now + delay_ns;
}

/* write as much of the current message as possible; returns -1 on error */
static int pump_write(conn_t *c, int idx) {
    while (c->sent < cfg.size) {
        ssize_t n = send(c->fd, msg + c->sent, cfg.size - c->sent, MSG_NOSIGNAL);
        if (n > 0) {
            c->sent += (uint32_t)n;
            bytes_sent += (uint64_t)n;
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (!c->want_out) set_events(c, idx, 1);
            return 0;
        }
        if (n < 0 && (errno == ECONNRESET || errno == EPIPE)) err(E_RESET);
        else err(E_WRITE);
        return -1;
    }
    if (c->want_out) set_events(c, idx, 0);
    return 0;
}

static void lost_conn(int idx, uint64_t now);

/* connect scenario: one request = one new connection, in flight from the
 * socket() call until the echo has been read. */
static void start_connect_request(int idx, uint64_t now) {
    conn_t *c = &conns[idx];
    if (!may_issue()) {
        c->state = ST_FREE;
        return;
    }
    c->measured = phase == PH_MEASURE;
    if (open_conn(idx, now) < 0) {
        schedule_retry(c, now, 1000000ull);
        return;
    }
    if (c->measured) issued_measured++;
    inflight++;
}

/* Start one request on an open, idle connection. */
static void start_request(int idx, uint64_t now) {
    conn_t *c = &conns[idx];
    if (!may_issue()) {
        c->state = ST_IDLE;
        return;
    }
    c->measured = phase == PH_MEASURE;
    if (c->measured) issued_measured++;
    c->t_start = now;
    c->sent = c->got = 0;
    c->state = ST_BUSY;
    inflight++;
    if (cfg.scenario == SC_UDP) {
        c->seq++;
        if (cfg.size >= 17) {
            char tmp[17];
            snprintf(tmp, sizeof tmp, "%016llx", (unsigned long long)c->seq);
            memcpy(msg, tmp, 16);
        }
        ssize_t n = send(c->fd, msg, cfg.size, 0);
        if (n != (ssize_t)cfg.size) {
            /* ECONNREFUSED here is an ICMP port unreachable from a
             * previous datagram; count it and retry a bit later. */
            err(E_UDP_SEND);
            inflight--;
            if (c->measured) issued_measured--;
            schedule_retry(c, now, 10000000ull);
            return;
        }
        bytes_sent += (uint64_t)n;
        return;
    }
    if (pump_write(c, idx) < 0) lost_conn(idx, now);
}

/* Connection failed or errored: close, and replace it if the scenario wants. */
static void lost_conn(int idx, uint64_t now) {
    conn_t *c = &conns[idx];
    close_conn(c);
    if (cfg.scenario == SC_HOLD) return; /* held connections are never replaced */
    if (phase == PH_ATTACK || phase == PH_WARMUP || phase == PH_MEASURE)
        schedule_retry(c, now, cfg.scenario == SC_CONNECT ? 1000000ull : 10000000ull);
}

static void complete_request(int idx) {
    conn_t *c = &conns[idx];
    /* a fresh timestamp: events are handled in batches, and the next request
     * on this connection starts now */
    uint64_t now = now_ns();
    inflight--;
    if (c->measured) {
        hadd(&hist, now - c->t_start);
        completed_measured++;
        last_completion = now;
    } else {
        warmup_completed++;
    }
    c->state = ST_IDLE;
    if (cfg.scenario == SC_CONNECT) {
        close_conn(c);
        start_connect_request(idx, now);
        return;
    }
    start_request(idx, now);
}

/* ------------------------------------------------------------------ */
/* slowloris: slow connections and new-connection probes               */

/* Start a non-blocking stream connect registered with epoll under `tag`.
 * Returns the fd, or -1 with *kind set to the error kind. */
static int connect_nb(uint32_t tag, uint32_t events, int *kind) {
    int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        *kind = E_SOCKET;
        return -1;
    }
    if (!is_unix) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    if (connect(fd, (struct sockaddr *)&addr, addrlen) < 0 && errno != EINPROGRESS) {
        int e = errno;
        close(fd);
        *kind = e == ECONNREFUSED ? E_REFUSED : e == EADDRNOTAVAIL ? E_ADDRNOTAVAIL : E_CONNECT;
        return -1;
    }
    struct epoll_event ev;
    ev.events = events;
    ev.data.u64 = 0;
    ev.data.u32 = tag;
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
        close(fd);
        *kind = E_SOCKET;
        return -1;
    }
    return fd;
}

static int connect_error(int fd) {
    int soerr = 0;
    socklen_t sl = sizeof soerr;
    getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl);
    return soerr;
}

static void slow_close(slow_t *s, int by_server) {
    if (s->fd >= 0) close(s->fd);
    s->fd = -1;
    if (s->state == SL_CONNECTING) slow_connecting--;
    if (by_server) slow_closed_by_server++;
    s->state = SL_DONE;
}

/* open slow connections at --slow-rate per second.  A rate, not a number
 * connecting at once: a slow connection counts as connected at the end of
 * the TCP handshake, before the server has accept()ed it, so waiting for
 * connects does not pace the ramp to the server; and a connect stuck in SYN
 * retransmission (a full accept queue drops SYNs) does not stall the rest. */
static void slow_ramp(uint64_t now) {
    uint64_t due = (uint64_t)((double)(now - attack_start) / 1e9 * cfg.slow_rate) + 1;
    while (slow_opened < cfg.slow && (uint64_t)slow_opened < due) {
        int i = slow_opened++;
        slow_t *s = &slows[i];
        int kind;
        s->t_start = now;
        s->fd = connect_nb((uint32_t)(cfg.conns + i), EPOLLIN | EPOLLOUT | EPOLLRDHUP, &kind);
        if (s->fd < 0) {
            slow_connect_failed++;
            s->state = SL_DONE;
            continue;
        }
        s->state = SL_CONNECTING;
        slow_connecting++;
    }
}

/* one byte, never a newline; then the next one an interval later */
static void slow_send(slow_t *s, uint64_t now) {
    ssize_t n = send(s->fd, "x", 1, MSG_NOSIGNAL);
    if (n == 1) {
        slow_bytes_sent++;
    } else if (!(n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))) {
        slow_close(s, 1); /* EPIPE, ECONNRESET: the server closed it */
        return;
    }
    while (s->next_send <= now) s->next_send += slow_interval_ns;
}

static void handle_slow(int i, uint32_t events, uint64_t now) {
    slow_t *s = &slows[i];
    if (s->fd < 0) return;
    if (s->state == SL_CONNECTING) {
        if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) return;
        if (connect_error(s->fd) != 0) {
            slow_connect_failed++;
            slow_close(s, 0);
            return;
        }
        slow_connecting--;
        slow_established++;
        s->state = SL_OPEN;
        struct epoll_event ev;
        ev.events = EPOLLIN | EPOLLRDHUP; /* from now on only EOF or (unexpected) data */
        ev.data.u64 = 0;
        ev.data.u32 = (uint32_t)(cfg.conns + i);
        epoll_ctl(ep, EPOLL_CTL_MOD, s->fd, &ev);
        /* the first byte now; the next ones in this connection's slot of
         * the interval, so that the N connections' bytes are spread evenly */
        s->next_send = attack_start + slow_interval_ns * (uint64_t)i / (uint64_t)cfg.slow;
        slow_send(s, now);
        return;
    }
    for (;;) {
        ssize_t n = recv(s->fd, scratch, scratch_len, 0);
        if (n > 0) {
            slow_unexpected_bytes += (uint64_t)n;
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
        slow_close(s, 1); /* EOF or reset */
        return;
    }
}

static void probe_close(probe_t *p) {
    if (p->fd >= 0) close(p->fd);
    p->fd = -1;
    p->state = ST_FREE;
    probes_inflight--;
}

static void probe_start(uint64_t now) {
    int slot = -1;
    for (int i = 0; i < nprobes; i++)
        if (probes[i].state == ST_FREE) {
            slot = i;
            break;
        }
    if (slot < 0) {
        probe_skipped++; /* cannot happen: slots >= timeout / interval + 2 */
        return;
    }
    probe_t *p = &probes[slot];
    int kind;
    probe_attempted++;
    p->t_start = now;
    p->sent = p->got = 0;
    p->fd = connect_nb((uint32_t)(cfg.conns + cfg.slow + slot), EPOLLIN | EPOLLOUT, &kind);
    if (p->fd < 0) {
        if (kind == E_REFUSED) probe_refused++;
        else probe_other++;
        return;
    }
    p->state = ST_CONNECTING;
    probes_inflight++;
}

static void probe_pump(probe_t *p, int i) {
    while (p->sent < cfg.size) {
        ssize_t n = send(p->fd, msg + p->sent, cfg.size - p->sent, MSG_NOSIGNAL);
        if (n > 0) {
            p->sent += (uint32_t)n;
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
        if (n < 0 && (errno == ECONNRESET || errno == EPIPE)) probe_reset++;
        else probe_other++;
        probe_close(p);
        return;
    }
    struct epoll_event ev;
    ev.events = EPOLLIN;
    ev.data.u64 = 0;
    ev.data.u32 = (uint32_t)(cfg.conns + cfg.slow + i);
    epoll_ctl(ep, EPOLL_CTL_MOD, p->fd, &ev);
}

static void handle_probe(int i, uint32_t events) {
    probe_t *p = &probes[i];
    if (p->fd < 0) return;
    if (p->state == ST_CONNECTING) {
        if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) return;
        int e = connect_error(p->fd);
        if (e != 0) {
            if (e == ECONNREFUSED) probe_refused++;
            else if (e == ETIMEDOUT) probe_connect_timeout++;
            else probe_other++;
            probe_close(p);
            return;
        }
        p->state = ST_BUSY;
        probe_pump(p, i);
        return;
    }
    if ((events & EPOLLOUT) && p->sent < cfg.size) {
        probe_pump(p, i);
        if (p->fd < 0) return;
    }
    if (!(events & (EPOLLIN | EPOLLERR | EPOLLHUP))) return;
    for (;;) {
        ssize_t n = recv(p->fd, scratch, cfg.size - p->got, 0);
        if (n > 0) {
            if (memcmp(scratch, msg + p->got, (size_t)n) != 0) {
                probe_mismatch++;
                probe_close(p);
                return;
            }
            p->got += (uint32_t)n;
            if (p->got == cfg.size) {
                probe_answered++;
                hadd(&probe_hist, now_ns() - p->t_start);
                probe_close(p);
                return;
            }
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
        if (n == 0) probe_eof++;
        else if (errno == ECONNRESET) probe_reset++;
        else probe_other++;
        probe_close(p);
        return;
    }
}

static void slowloris_housekeeping(uint64_t now) {
    for (int i = 0; i < cfg.slow; i++) {
        slow_t *s = &slows[i];
        if (s->state == SL_OPEN && now >= s->next_send) slow_send(s, now);
    }
    for (int i = 0; i < nprobes; i++) {
        probe_t *p = &probes[i];
        if (p->state == ST_FREE || now <= p->t_start || now - p->t_start <= probe_timeout_ns) continue;
        if (p->state == ST_CONNECTING) probe_connect_timeout++;
        else probe_no_answer++;
        probe_close(p);
    }
}

static int slow_open_count(void) {
    int n = 0;
    for (int i = 0; i < cfg.slow; i++) n += slows[i].state == SL_OPEN;
    return n;
}

/* ------------------------------------------------------------------ */
/* event handling                                                      */

static void on_connected(int idx, uint64_t now) {
    conn_t *c = &conns[idx];
    if (phase == PH_SETUP) {
        /* setup ramp: send the first message right away */
        established++;
        c->state = ST_BUSY;
        c->t_start = now;
        c->sent = c->got = 0;
        inflight++;
        if (pump_write(c, idx) < 0) lost_conn(idx, now);
        return;
    }
    if (cfg.scenario == SC_CONNECT) {
        /* the request (timed from the connect) is already in flight */
        c->state = ST_BUSY;
        if (pump_write(c, idx) < 0) lost_conn(idx, now);
        return;
    }
    c->state = ST_IDLE;
    set_events(c, idx, 0);
    start_request(idx, now);
}

static void handle_tcp(int idx, uint32_t events, uint64_t now) {
    conn_t *c = &conns[idx];
    if (c->fd < 0) return;
    if (c->state == ST_CONNECTING) {
        if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) return;
        int soerr = 0;
        socklen_t sl = sizeof soerr;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &soerr, &sl);
        if (soerr != 0) {
            if (soerr == ECONNREFUSED) err(E_REFUSED);
            else if (soerr == ETIMEDOUT) err(E_CONNECT_TIMEOUT);
            else err(E_CONNECT);
            lost_conn(idx, now);
            return;
        }
        on_connected(idx, now);
        return;
    }
    if ((events & EPOLLOUT) && c->state == ST_BUSY && c->sent < cfg.size) {
        if (pump_write(c, idx) < 0) {
            lost_conn(idx, now);
            return;
        }
    }
    if (!(events & (EPOLLIN | EPOLLERR | EPOLLHUP))) return;
    if (c->state != ST_BUSY) {
        /* data or EOF on a connection with no request outstanding */
        ssize_t n = recv(c->fd, scratch, scratch_len, 0);
        if (n > 0) err(E_UNEXPECTED);
        else if (n == 0) err(E_EOF);
        else if (errno == EAGAIN || errno == EWOULDBLOCK) return;
        else err(E_RESET);
        lost_conn(idx, now);
        return;
    }
    for (;;) {
        uint32_t want = cfg.size - c->got;
        ssize_t n = recv(c->fd, scratch, want, 0);
        if (n > 0) {
            bytes_received += (uint64_t)n;
            if (memcmp(scratch, msg + c->got, (size_t)n) != 0) {
                err(E_MISMATCH);
                lost_conn(idx, now);
                return;
            }
            c->got += (uint32_t)n;
            if (c->got == cfg.size) {
                if (phase == PH_SETUP) {
                    inflight--;
                    c->state = ST_IDLE;
                    c->answered = 1;
                    answered++;
                    c->opening = 0;
                    opening--;
                } else if (phase == PH_SETUP_ROUND) {
                    inflight--;
                    c->state = ST_IDLE;
                    c->round_ok = 1;
                    round_answered++;
                } else {
                    complete_request(idx);
                }
                return;
            }
            continue;
        }
        if (n == 0) {
            err(E_EOF);
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
            return;
        } else if (errno == ECONNRESET) {
            err(E_RESET);
        } else {
            err(E_READ);
        }
        lost_conn(idx, now);
        return;
    }
}

static void handle_udp(int idx) {
    conn_t *c = &conns[idx];
    for (;;) {
        ssize_t n = recv(c->fd, scratch, scratch_len, 0);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) return;
            /* ECONNREFUSED: ICMP port unreachable; the datagram is lost,
             * the per-datagram timeout will count it. */
            if (errno != ECONNREFUSED) err(E_READ);
            return;
        }
        bytes_received += (uint64_t)n;
        if (c->state != ST_BUSY) {
            udp_late++;
            continue;
        }
        if ((uint32_t)n != cfg.size) {
            err(E_MISMATCH);
            continue;
        }
        uint32_t off = 0;
        if (cfg.size >= 17) {
            /* msg is shared by all clients: compare the sequence number with
             * this client's, and the rest with the constant payload */
            char want[17];
            snprintf(want, sizeof want, "%016llx", (unsigned long long)c->seq);
            if (memcmp(scratch, want, 16) != 0) { /* a late reply to an older datagram */
                udp_late++;
                continue;
            }
            off = 16;
        }
        if (memcmp(scratch + off, msg + off, cfg.size - off) != 0) {
            err(E_MISMATCH);
            continue;
        }
        complete_request(idx);
        /* one datagram is outstanding per client: no need for another recv()
         * (level-triggered epoll reports anything still queued) */
        return;
    }
}

/* periodic: timeouts, retries, hold connect batching */
static void housekeeping(uint64_t now) {
    for (int i = 0; i < cfg.conns; i++) {
        conn_t *c = &conns[i];
        switch (c->state) {
        case ST_BUSY:
            if (now > c->t_start && now - c->t_start > cfg.timeout_ns) {
                if (cfg.scenario == SC_UDP) {
                    err(E_UDP_LOST);
                    inflight--;
                    c->state = ST_IDLE;
                    start_request(i, now);
                } else if (phase == PH_SETUP || phase == PH_SETUP_ROUND) {
                    /* setup has one deadline for all, see the main loop */
                } else {
                    err(E_TIMEOUT);
                    lost_conn(i, now);
                }
            }
            break;
        case ST_CONNECTING:
            if (phase != PH_SETUP && now > c->t_start && now - c->t_start > cfg.timeout_ns) {
                err(E_CONNECT_TIMEOUT);
                lost_conn(i, now);
            }
            break;
        case ST_RETRY:
            if (now >= c->retry_at) {
                c->state = ST_FREE;
                if (!may_issue()) break;
                if (cfg.scenario == SC_UDP) {
                    c->state = ST_IDLE;
                    start_request(i, now);
                } else if (cfg.scenario == SC_CONNECT) {
                    start_connect_request(i, now);
                } else if (open_conn(i, now) < 0) {
                    schedule_retry(c, now, 10000000ull);
                }
            }
            break;
        case ST_IDLE:
            /* idle connections (e.g. held ones after warmup) resume work */
            if (may_issue() && phase >= PH_ATTACK) start_request(i, now);
            break;
        default:
            break;
        }
    }
}

/* open the first C connections for connect/pingpong/udp scenarios */
static void open_initial(uint64_t now) {
    for (int i = 0; i < cfg.conns; i++) {
        conn_t *c = &conns[i];
        if (cfg.scenario == SC_CONNECT) {
            start_connect_request(i, now);
        } else if (cfg.scenario == SC_UDP) {
            if (open_conn(i, now) < 0) die("cannot create udp socket");
            start_request(i, now);
        } else {
            if (open_conn(i, now) < 0) schedule_retry(c, now, 10000000ull);
        }
    }
}

static void enter_measure(uint64_t now) {
    phase = PH_MEASURE;
    measure_start = now;
    measure_end = now + (uint64_t)(cfg.duration * 1e9);
    last_completion = now;
    if (cfg.scenario == SC_SLOWLORIS) {
        slow_open_at_measure = slow_open_count();
        probe_next = now; /* the first probe at once */
    }
    /* phase markers on stderr let a harness sample the server's CPU time at
     * the exact start and end of the measured window */
    marker("measure", 0);
}

static void enter_warmup_or_measure(uint64_t now) {
    if (cfg.warmup > 0) {
        phase = PH_WARMUP;
        warmup_end = now + (uint64_t)(cfg.warmup * 1e9);
    } else {
        enter_measure(now);
    }
}

static void ramp_open(uint64_t now) {
    while (opened < cfg.conns && opening < cfg.connect_batch) {
        int i = opened++;
        if (open_conn(i, now) < 0) continue;
        conns[i].opening = 1;
        opening++;
    }
}

static void usage(void) {
    fprintf(stderr,
            "usage: loadgen --target HOST:PORT|[::1]:PORT|/unix/path --scenario "
            "pingpong|connect|hold|udp|slowloris\n"
            "  -c, --connections N     concurrent connections/clients (default 1)\n"
            "  -s, --size BYTES        message size incl. trailing newline (default 64)\n"
            "  -d, --duration SEC      measured duration (default 3)\n"
            "  -n, --max-requests N    hard cap on measured requests (default 10000000)\n"
            "  -w, --warmup SEC        warmup before measuring (default 0.5)\n"
            "  -t, --timeout-ms MS     per-request timeout / UDP loss timeout (default 5000)\n"
            "      --hold-timeout SEC  pingpong/hold: time allowed for the setup ramp, and for\n"
            "                          hold's round over all connections (default 10)\n"
            "      --connect-batch N   pingpong/hold: connections opening at once (default 4)\n"
            "      --hard-timeout SEC  stop everything after this long (default: derived)\n"
            "      --slow N            slowloris: attacking connections (default 0)\n"
            "      --slow-interval SEC slowloris: one byte per attacking connection this often (default 5)\n"
            "      --slow-rate N       slowloris: attacking connections started per second (default 500)\n"
            "      --probe-interval-ms MS  slowloris: a new connection this often while measuring\n"
            "                          (default 30; 0: none)\n"
            "      --probe-timeout-ms MS   slowloris: a new connection's echo must arrive within this\n"
            "                          (default 1000)\n"
            "      --sync-stdin        at the \"held\" and \"done\" markers, wait for a line on stdin\n");
    exit(2);
}

int main(int argc, char **argv) {
    cfg.conns = 1;
    cfg.size = 64;
    cfg.duration = 3;
    cfg.warmup = 0.5;
    cfg.max_requests = 10000000ull;
    cfg.timeout_ns = 5000ull * 1000000ull;
    cfg.hold_timeout = 10;
    cfg.connect_batch = 4;
    cfg.hard_timeout = -1;
    cfg.scenario = -1;
    cfg.slow_interval = 5;
    cfg.slow_rate = 500;
    cfg.probe_interval_ms = 30;
    cfg.probe_timeout_ms = 1000;
    static struct option opts[] = {
        {"target", required_argument, 0, 'T'},   {"scenario", required_argument, 0, 'S'},
        {"connections", required_argument, 0, 'c'}, {"size", required_argument, 0, 's'},
        {"duration", required_argument, 0, 'd'}, {"max-requests", required_argument, 0, 'n'},
        {"warmup", required_argument, 0, 'w'},   {"timeout-ms", required_argument, 0, 't'},
        {"hold-timeout", required_argument, 0, 'H'}, {"connect-batch", required_argument, 0, 'B'},
        {"hard-timeout", required_argument, 0, 'X'}, {"help", no_argument, 0, 'h'},
        {"slow", required_argument, 0, 'L'}, {"slow-interval", required_argument, 0, 'I'},
        {"slow-rate", required_argument, 0, 'R'},
        {"probe-interval-ms", required_argument, 0, 'P'},
        {"probe-timeout-ms", required_argument, 0, 'Q'}, {"sync-stdin", no_argument, 0, 'Y'},
        {0, 0, 0, 0}};
    int o;
    while ((o = getopt_long(argc, argv, "c:s:d:n:w:t:h", opts, NULL)) != -1) {
        switch (o) {
        case 'T': snprintf(cfg.target, sizeof cfg.target, "%s", optarg); break;
        case 'S':
            for (int i = 0; i < SC_COUNT; i++)
                if (strcmp(optarg, SC_NAMES[i]) == 0) cfg.scenario = i;
            if (cfg.scenario < 0) usage();
            break;
        case 'c': cfg.conns = atoi(optarg); break;
        case 's': cfg.size = (uint32_t)strtoul(optarg, NULL, 10); break;
        case 'd': cfg.duration = atof(optarg); break;
        case 'n': cfg.max_requests = strtoull(optarg, NULL, 10); break;
        case 'w': cfg.warmup = atof(optarg); break;
        case 't': cfg.timeout_ns = (uint64_t)(atof(optarg) * 1e6); break;
        case 'H': cfg.hold_timeout = atof(optarg); break;
        case 'B': cfg.connect_batch = atoi(optarg); break;
        case 'X': cfg.hard_timeout = atof(optarg); break;
        case 'L': cfg.slow = atoi(optarg); break;
        case 'I': cfg.slow_interval = atof(optarg); break;
        case 'R': cfg.slow_rate = atof(optarg); break;
        case 'P': cfg.probe_interval_ms = atof(optarg); break;
        case 'Q': cfg.probe_timeout_ms = atof(optarg); break;
        case 'Y': cfg.sync_stdin = 1; break;
        default: usage();
        }
    }
    if (!cfg.target[0] || cfg.scenario < 0) usage();
    if (cfg.conns < 1 || cfg.conns > 1000000) die("bad --connections");
    if (cfg.size < 2 || cfg.size > 16 * 1024 * 1024) die("--size must be 2..16M");
    if (cfg.scenario == SC_UDP && cfg.size > 65507) die("udp --size must be <= 65507");
    if (cfg.duration <= 0 || cfg.duration > 3600) die("--duration must be in (0, 3600]");
    if (cfg.warmup < 0 || cfg.warmup > 600) die("bad --warmup");
    if (cfg.connect_batch < 1) cfg.connect_batch = 1;
    if (cfg.slow < 0 || cfg.slow > 1000000) die("bad --slow");
    if (cfg.slow && cfg.scenario != SC_SLOWLORIS) die("--slow is for --scenario slowloris");
    if (cfg.slow_interval <= 0) die("--slow-interval must be > 0");
    if (cfg.slow_rate <= 0) die("--slow-rate must be > 0");
    if (cfg.probe_interval_ms < 0 || cfg.probe_timeout_ms <= 0) die("bad probe interval or timeout");
    if (cfg.scenario != SC_SLOWLORIS) cfg.probe_interval_ms = 0;
    slow_interval_ns = (uint64_t)(cfg.slow_interval * 1e9);
    probe_interval_ns = (uint64_t)(cfg.probe_interval_ms * 1e6);
    probe_timeout_ns = (uint64_t)(cfg.probe_timeout_ms * 1e6);
    if (probe_interval_ns) nprobes = (int)(probe_timeout_ns / probe_interval_ns) + 2;
    if (cfg.hard_timeout <= 0)
        cfg.hard_timeout = cfg.warmup + cfg.duration + (double)cfg.timeout_ns / 1e9 +
                           (cfg.scenario == SC_HOLD || cfg.scenario == SC_SLOWLORIS ? 2 : 1) *
                               cfg.hold_timeout +
                           cfg.probe_timeout_ms / 1e3 + 10;
    parse_target(cfg.target);

    /* many connections: raise the soft fd limit to the hard limit, and the
     * hard one too if that is not enough and we may (CAP_SYS_RESOURCE) */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rlim_t need = (rlim_t)cfg.conns + (rlim_t)cfg.slow + (rlim_t)nprobes + 16;
        rl.rlim_cur = rl.rlim_max;
        if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < need) {
            struct rlimit more = {need, need};
            if (setrlimit(RLIMIT_NOFILE, &more) == 0) rl = more;
        }
        setrlimit(RLIMIT_NOFILE, &rl);
        getrlimit(RLIMIT_NOFILE, &rl);
        if ((rlim_t)cfg.conns + (rlim_t)cfg.slow + (rlim_t)nprobes + 16 > rl.rlim_cur) {
            fprintf(stderr, "loadgen: %d connections exceed RLIMIT_NOFILE %llu\n",
                    cfg.conns + cfg.slow + nprobes, (unsigned long long)rl.rlim_cur);
            return 2;
        }
    }
    signal(SIGPIPE, SIG_IGN);
    /* last-resort guard: the default SIGALRM action terminates the process */
    alarm((unsigned)(cfg.hard_timeout + 10));

    msg = malloc(cfg.size);
    scratch_len = cfg.size > 65536 ? cfg.size : 65536;
    scratch = malloc(scratch_len);
    conns = calloc((size_t)cfg.conns, sizeof(conn_t));
    slows = calloc((size_t)cfg.slow + 1, sizeof(slow_t));
    probes = calloc((size_t)nprobes + 1, sizeof(probe_t));
    if (!msg || !scratch || !conns || !slows || !probes) die("out of memory");
    memset(msg, 'x', cfg.size - 1);
    msg[cfg.size - 1] = '\n';
    for (int i = 0; i < cfg.conns; i++) conns[i].fd = -1;
    for (int i = 0; i < cfg.slow; i++) slows[i].fd = -1;
    for (int i = 0; i < nprobes; i++) probes[i].fd = -1;

    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) die("epoll_create1 failed");

    uint64_t now = now_ns();
    t_begin = now;
    hard_end = now + (uint64_t)(cfg.hard_timeout * 1e9);
    uint64_t hold_phase_end = 0;
    if (cfg.scenario == SC_HOLD || cfg.scenario == SC_PINGPONG || cfg.scenario == SC_SLOWLORIS) {
        phase = PH_SETUP;
        hold_phase_end = now + (uint64_t)(cfg.hold_timeout * 1e9);
        ramp_open(now);
    } else {
        enter_warmup_or_measure(now);
        open_initial(now);
    }

    enum { MAXEV = 1024 };
    struct epoll_event evs[MAXEV];
    uint64_t next_house = now + 10000000ull;
    while (phase != PH_DONE) {
        int n = epoll_wait(ep, evs, MAXEV, 5);
        now = now_ns();
        for (int i = 0; i < n; i++) {
            int idx = (int)evs[i].data.u32;
            if (cfg.scenario == SC_UDP) handle_udp(idx);
            else if (idx < cfg.conns) handle_tcp(idx, evs[i].events, now);
            else if (idx < cfg.conns + cfg.slow) handle_slow(idx - cfg.conns, evs[i].events, now);
            else handle_probe(idx - cfg.conns - cfg.slow, evs[i].events);
        }
        /* phase transitions */
        if (now >= hard_end) {
            stopped_by = "hard_timeout";
            break;
        }
        switch (phase) {
        case PH_SETUP:
            ramp_open(now);
            if ((opened >= cfg.conns && opening == 0) || now >= hold_phase_end) {
                for (int i = 0; i < cfg.conns; i++) {
                    conn_t *c = &conns[i];
                    if (!c->opening) continue;
                    err(c->state == ST_CONNECTING ? E_CONNECT_TIMEOUT : E_UNANSWERED);
                    close_conn(c);
                }
                attempted = opened; /* below the target if the ramp stalled */
                opened = cfg.conns;
                inflight = 0;
                setup_s = (double)(now - t_begin) / 1e9;
                if (cfg.scenario == SC_PINGPONG) {
                    enter_warmup_or_measure(now);
                    for (int i = 0; i < cfg.conns; i++)
                        if (conns[i].state == ST_IDLE) start_request(i, now);
                    break;
                }
                if (cfg.scenario == SC_SLOWLORIS) {
                    /* the normal connections ping-pong (unmeasured) while the
                     * slow ones open */
                    phase = PH_ATTACK;
                    attack_start = now;
                    attack_end = now + (uint64_t)(cfg.hold_timeout * 1e9);
                    for (int i = 0; i < cfg.conns; i++)
                        if (conns[i].state == ST_IDLE) start_request(i, now);
                    slow_ramp(now);
                    break;
                }
                /* hold: every connection is open now; one round through all */
                phase = PH_SETUP_ROUND;
                hold_phase_end = now + (uint64_t)(cfg.hold_timeout * 1e9);
                for (int i = 0; i < cfg.conns; i++) {
                    conn_t *c = &conns[i];
                    if (c->state != ST_IDLE) continue;
                    c->state = ST_BUSY;
                    c->t_start = now;
                    c->sent = c->got = 0;
                    inflight++;
                    if (pump_write(c, i) < 0) lost_conn(i, now);
                }
            }
            break;
        case PH_SETUP_ROUND:
            if (inflight == 0 || now >= hold_phase_end) {
                for (int i = 0; i < cfg.conns; i++)
                    if (conns[i].fd >= 0 && !conns[i].round_ok) {
                        err(E_UNANSWERED);
                        close_conn(&conns[i]);
                    }
                inflight = 0;
                round_s = (double)(now - t_begin) / 1e9 - setup_s;
                marker("held", 1); /* every connection open and answered */
                now = now_ns();
                enter_warmup_or_measure(now);
                for (int i = 0; i < cfg.conns; i++)
                    if (conns[i].round_ok) start_request(i, now);
            }
            break;
        case PH_ATTACK:
            slow_ramp(now);
            if ((slow_opened >= cfg.slow && slow_connecting == 0) || now >= attack_end) {
                for (int i = 0; i < cfg.slow; i++)
                    if (slows[i].state == SL_CONNECTING) {
                        slow_connect_timeout++;
                        slow_close(&slows[i], 0);
                    }
                attack_s = (double)(now - attack_start) / 1e9;
                marker("held", 1); /* the slow connections are open */
                now = now_ns();
                enter_warmup_or_measure(now);
                for (int i = 0; i < cfg.conns; i++)
                    if (conns[i].state == ST_IDLE) start_request(i, now);
            }
            break;
        case PH_WARMUP:
            if (now >= warmup_end) enter_measure(now);
            break;
        case PH_MEASURE:
            if (issued_measured >= cfg.max_requests || now >= measure_end) {
                if (issued_measured >= cfg.max_requests && now < measure_end)
                    stopped_by = "max_requests";
                phase = PH_DRAIN;
                drain_end = now + cfg.timeout_ns;
                marker("drain", 0);
            }
            break;
        case PH_DRAIN:
            if ((inflight == 0 && probes_inflight == 0) || now >= drain_end) phase = PH_DONE;
            break;
        }
        if (phase == PH_MEASURE && probe_interval_ns) {
            while (now >= probe_next) {
                probe_start(now);
                probe_next += probe_interval_ns;
            }
        }
        if (now >= next_house) {
            now = now_ns();
            housekeeping(now);
            if (cfg.scenario == SC_SLOWLORIS) slowloris_housekeeping(now);
            next_house = now + 10000000ull;
        }
        if (phase == PH_MEASURE && cfg.scenario == SC_HOLD && round_answered == 0) {
            /* nothing to drive */
            phase = PH_DONE;
        }
    }
    now = now_ns();
    int slow_open_at_end = slow_open_count();
    marker("done", 1); /* before closing the connections */
    int unfinished = 0;
    for (int i = 0; i < cfg.conns; i++) {
        int busy = conns[i].state == ST_BUSY ||
                   (conns[i].state == ST_CONNECTING && cfg.scenario == SC_CONNECT);
        if (busy && conns[i].measured && phase >= PH_WARMUP) unfinished++;
        if (conns[i].fd >= 0) close(conns[i].fd);
    }
    errors[E_UNFINISHED] += (uint64_t)unfinished;
    for (int i = 0; i < cfg.slow; i++)
        if (slows[i].fd >= 0) close(slows[i].fd);
    for (int i = 0; i < nprobes; i++)
        if (probes[i].state != ST_FREE) {
            probe_unfinished++;
            probe_close(&probes[i]);
        }
    if (measure_start == 0) measure_start = now;
    uint64_t end = last_completion > measure_start ? last_completion : now;
    double dur = (double)(end - measure_start) / 1e9;
    if (dur <= 0) dur = 1e-9;

    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
                 (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;

    uint64_t etotal = 0;
    for (int i = 0; i < E_NKINDS; i++) etotal += errors[i];
    printf("{\"scenario\": \"%s\", \"target\": \"%s\", \"connections\": %d, \"size\": %u, ",
           SC_NAMES[cfg.scenario], cfg.target, cfg.conns, cfg.size);
    printf("\"requests\": %llu, \"issued\": %llu, \"warmup_requests\": %llu, ",
           (unsigned long long)completed_measured, (unsigned long long)issued_measured,
           (unsigned long long)warmup_completed);
    printf("\"duration_s\": %.6f, \"requests_per_s\": %.1f, ", dur,
           (double)completed_measured / dur);
    printf("\"latency_us\": {\"min\": %.1f, \"p50\": %.1f, \"p90\": %.1f, \"p99\": %.1f, "
           "\"p999\": %.1f, \"max\": %.1f, \"mean\": %.1f}, ",
           hist.min / 1e3, hpct(&hist, 0.50) / 1e3, hpct(&hist, 0.90) / 1e3,
           hpct(&hist, 0.99) / 1e3, hpct(&hist, 0.999) / 1e3, hist.max / 1e3,
           hist.count ? hist.sum / (double)hist.count / 1e3 : 0.0);
    printf("\"errors\": {");
    int first = 1;
    for (int i = 0; i < E_NKINDS; i++) {
        if (!errors[i]) continue;
        printf("%s\"%s\": %llu", first ? "" : ", ", E_NAMES[i], (unsigned long long)errors[i]);
        first = 0;
    }
    printf("}, \"errors_total\": %llu, ", (unsigned long long)etotal);
    if (cfg.scenario == SC_HOLD || cfg.scenario == SC_PINGPONG || cfg.scenario == SC_SLOWLORIS) {
        printf("\"setup\": {\"target\": %d, \"attempted\": %d, \"established\": %d, "
               "\"answered\": %d, \"setup_s\": %.3f",
               cfg.conns, attempted, established, answered, setup_s);
        if (cfg.scenario == SC_HOLD)
            printf(", \"round_answered\": %d, \"round_s\": %.3f", round_answered, round_s);
        printf("}, ");
    }
    if (cfg.scenario == SC_UDP) printf("\"udp_late_replies\": %llu, ", (unsigned long long)udp_late);
    if (cfg.scenario == SC_SLOWLORIS) {
        printf("\"slow\": {\"target\": %d, \"attempted\": %d, \"established\": %d, "
               "\"connect_failed\": %d, \"connect_timeout\": %d, \"open_at_measure\": %d, "
               "\"open_at_end\": %d, \"closed_by_server\": %d, \"bytes_sent\": %llu, "
               "\"unexpected_bytes\": %llu, \"interval_s\": %g, \"rate_per_s\": %g, "
               "\"attack_s\": %.3f}, ",
               cfg.slow, slow_opened, slow_established, slow_connect_failed, slow_connect_timeout,
               slow_open_at_measure, slow_open_at_end, slow_closed_by_server,
               (unsigned long long)slow_bytes_sent, (unsigned long long)slow_unexpected_bytes,
               cfg.slow_interval, cfg.slow_rate, attack_s);
        printf("\"probes\": {\"interval_ms\": %g, \"timeout_ms\": %g, \"attempted\": %llu, "
               "\"answered\": %llu, \"connect_timeout\": %llu, \"no_answer\": %llu, "
               "\"refused\": %llu, \"reset\": %llu, \"eof\": %llu, \"mismatch\": %llu, "
               "\"other\": %llu, \"skipped\": %llu, \"unfinished\": %llu, "
               "\"latency_us\": {\"p50\": %.1f, \"p99\": %.1f, \"max\": %.1f}}, ",
               cfg.probe_interval_ms, cfg.probe_timeout_ms, (unsigned long long)probe_attempted,
               (unsigned long long)probe_answered, (unsigned long long)probe_connect_timeout,
               (unsigned long long)probe_no_answer, (unsigned long long)probe_refused,
               (unsigned long long)probe_reset, (unsigned long long)probe_eof,
               (unsigned long long)probe_mismatch, (unsigned long long)probe_other,
               (unsigned long long)probe_skipped, (unsigned long long)probe_unfinished,
               hpct(&probe_hist, 0.50) / 1e3, hpct(&probe_hist, 0.99) / 1e3, probe_hist.max / 1e3);
    }
    printf("\"bytes_sent\": %llu, \"bytes_received\": %llu, ", (unsigned long long)bytes_sent,
           (unsigned long long)bytes_received);
    printf("\"stopped_by\": \"%s\", \"wall_s\": %.3f, \"loadgen_cpu_s\": %.3f}\n", stopped_by,
           (double)(now - t_begin) / 1e9, cpu);
    return 0;
}
