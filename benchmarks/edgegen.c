/*
 * edgegen: a connection-per-request client that speaks what sits in front of
 * a server (issue 9): an optional PROXY protocol header (v1 or v2, the fixed
 * header HAProxy would send) and an optional TLS 1.3 handshake (OpenSSL).
 *
 * Each request is one new connection: connect, [PROXY header], [TLS
 * handshake], send one S-byte line (S-1 'x' and '\n'), read the echo up to
 * its '\n', [close_notify], close.  Latency covers all of it.
 *
 * loadgen.c speaks neither PROXY nor TLS and is single-threaded non-blocking;
 * this one is C threads with blocking sockets (--connections of them, one
 * connection each in flight), which is enough when, as here, the server's
 * CPU is what runs out and the client's own handshake work is reported
 * beside it (loadgen_cpu_s).  Every TLS connection is a full handshake: the
 * client keeps no sessions (no resumption), verifies nothing (the
 * certificate is a throw-away self-signed one) and sends SNI "localhost" as a
 * browser would.
 *
 * Bounded: by --max-requests (exactly that many connections attempted, for
 * callgrind's short/long pair) or by --warmup + --duration, and by a
 * per-socket --timeout-ms.  Only loopback targets are accepted.
 *
 * Output: one JSON object on stdout.
 *
 * Build: gcc -O2 -pthread -o edgegen edgegen.c -lssl -lcrypto
 *        (Debian: apt-get install libssl-dev; benchmarks only)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

enum { E_CONNECT, E_PROXY, E_HANDSHAKE, E_WRITE, E_READ, E_MISMATCH, E_KINDS };
static const char *E_NAMES[E_KINDS] = {"connect", "proxy_write", "handshake", "write", "read", "mismatch"};

static struct {
    int connections, size, proxy, tls;
    long max_requests;
    double duration, warmup;
    int timeout_ms;
} cfg = {4, 64, 0, 0, 0, 3.0, 0.5, 5000};

static struct sockaddr_in addr;
static SSL_CTX *ctx;
static char *msg;
static unsigned char proxy_hdr[128];
static size_t proxy_len;

static atomic_long issued;
static uint64_t t_measure, t_end;  /* duration mode: the measured window */

typedef struct {
    pthread_t th;
    long done_total, done_measured;
    long errors[E_KINDS];
    double *lat;  /* µs of the measured connections */
    long nlat, caplat;
} worker_t;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static double cpu_s(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

static int send_all(int fd, const void *buf, size_t len) {
    const char *p = buf;
    while (len) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n <= 0) return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* One request: 0 on success, else the error kind. */
static int one_connection(char *buf) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return E_CONNECT;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct timeval tv = {cfg.timeout_ms / 1000, (cfg.timeout_ms % 1000) * 1000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    int rc = 0;
    SSL *ssl = NULL;
    size_t got = 0;
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
        rc = E_CONNECT;
        goto out;
    }
    if (proxy_len && send_all(fd, proxy_hdr, proxy_len) < 0) {
        rc = E_PROXY;
        goto out;
    }
    if (cfg.tls) {
        ssl = SSL_new(ctx);
        SSL_set_fd(ssl, fd);
        SSL_set_tlsext_host_name(ssl, "localhost");
        if (SSL_connect(ssl) != 1) {
            rc = E_HANDSHAKE;
            goto out;
        }
        if (SSL_write(ssl, msg, cfg.size) != cfg.size) {
            rc = E_WRITE;
            goto out;
        }
        while (got < (size_t)cfg.size) {
            int n = SSL_read(ssl, buf + got, cfg.size - (int)got);
            if (n <= 0) {
                rc = E_READ;
                goto out;
            }
            got += (size_t)n;
        }
    } else {
        if (send_all(fd, msg, cfg.size) < 0) {
            rc = E_WRITE;
            goto out;
        }
        while (got < (size_t)cfg.size) {
            ssize_t n = recv(fd, buf + got, cfg.size - got, 0);
            if (n <= 0) {
                rc = E_READ;
                goto out;
            }
            got += (size_t)n;
        }
    }
    if (memcmp(buf, msg, cfg.size) != 0) rc = E_MISMATCH;
out:
    if (ssl) {
        if (rc == 0) SSL_shutdown(ssl); /* our close_notify; the server's is not awaited */
        SSL_free(ssl);
        ERR_clear_error();
    }
    close(fd);
    return rc;
}

static void *worker_main(void *arg) {
    worker_t *w = arg;
    char *buf = malloc(cfg.size);
    for (;;) {
        if (cfg.max_requests) {
            if (atomic_fetch_add(&issued, 1) >= cfg.max_requests) break;
        }
        uint64_t t0 = now_ns();
        if (!cfg.max_requests && t0 >= t_end) break;
        int rc = one_connection(buf);
        uint64_t t1 = now_ns();
        if (rc) {
            w->errors[rc]++;
            if (!cfg.max_requests) usleep(1000);
            continue;
        }
        w->done_total++;
        int measured = cfg.max_requests ? 1 : (t0 >= t_measure && t1 <= t_end);
        if (!measured) continue;
        w->done_measured++;
        if (w->nlat == w->caplat) {
            w->caplat = w->caplat ? 2 * w->caplat : 4096;
            w->lat = realloc(w->lat, (size_t)w->caplat * sizeof *w->lat);
        }
        w->lat[w->nlat++] = (double)(t1 - t0) / 1e3;
    }
    free(buf);
    return NULL;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void build_proxy_header(int version, int port) {
    if (version == 1) {
        proxy_len = (size_t)snprintf((char *)proxy_hdr, sizeof proxy_hdr, "PROXY TCP4 203.0.113.7 127.0.0.1 40000 %d\r\n",
                                     port);
        return;
    }
    static const unsigned char sig[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};
    unsigned char *p = proxy_hdr;
    memcpy(p, sig, 12);
    p[12] = 0x21; /* version 2, PROXY */
    p[13] = 0x11; /* TCP over IPv4 */
    p[14] = 0;
    p[15] = 12; /* addresses: 4 + 4 + 2 + 2 */
    unsigned char src[4] = {203, 0, 113, 7}, dst[4] = {127, 0, 0, 1};
    memcpy(p + 16, src, 4);
    memcpy(p + 20, dst, 4);
    p[24] = 40000 >> 8;
    p[25] = 40000 & 0xff;
    p[26] = (unsigned char)(port >> 8);
    p[27] = (unsigned char)(port & 0xff);
    proxy_len = 28;
}

static void usage(const char *prog) {
    fprintf(stderr,
            "usage: %s --target 127.0.0.1:PORT [--connections C] [--size S] [--proxy 1|2] [--tls]\n"
            "          [--max-requests N | --duration S --warmup S] [--timeout-ms MS]\n",
            prog);
    exit(2);
}

int main(int argc, char **argv) {
    static struct option opts[] = {
        {"target", required_argument, 0, 't'},      {"connections", required_argument, 0, 'c'},
        {"size", required_argument, 0, 's'},        {"proxy", required_argument, 0, 'p'},
        {"tls", no_argument, 0, 'T'},               {"max-requests", required_argument, 0, 'n'},
        {"duration", required_argument, 0, 'd'},    {"warmup", required_argument, 0, 'w'},
        {"timeout-ms", required_argument, 0, 'o'},  {0, 0, 0, 0},
    };
    const char *target = NULL;
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 't': target = optarg; break;
        case 'c': cfg.connections = atoi(optarg); break;
        case 's': cfg.size = atoi(optarg); break;
        case 'p': cfg.proxy = atoi(optarg); break;
        case 'T': cfg.tls = 1; break;
        case 'n': cfg.max_requests = atol(optarg); break;
        case 'd': cfg.duration = atof(optarg); break;
        case 'w': cfg.warmup = atof(optarg); break;
        case 'o': cfg.timeout_ms = atoi(optarg); break;
        default: usage(argv[0]);
        }
    }
    if (!target || cfg.connections < 1 || cfg.size < 2 || (cfg.proxy != 0 && cfg.proxy != 1 && cfg.proxy != 2))
        usage(argv[0]);
    const char *colon = strrchr(target, ':');
    if (!colon) usage(argv[0]);
    char host[64];
    snprintf(host, sizeof host, "%.*s", (int)(colon - target), target);
    int port = atoi(colon + 1);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1 || (ntohl(addr.sin_addr.s_addr) >> 24) != 127) {
        fprintf(stderr, "edgegen: only IPv4 loopback targets (127.x.x.x), got %s\n", host);
        return 2;
    }
    msg = malloc(cfg.size);
    memset(msg, 'x', cfg.size - 1);
    msg[cfg.size - 1] = '\n';
    if (cfg.proxy) build_proxy_header(cfg.proxy, port);
    if (cfg.tls) {
        ctx = SSL_CTX_new(TLS_client_method());
        SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
        SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF); /* every handshake a full one */
    }
    alarm((unsigned)(cfg.max_requests ? 3600 : cfg.warmup + cfg.duration + 60)); /* last resort */

    worker_t *ws = calloc((size_t)cfg.connections, sizeof *ws);
    uint64_t t0 = now_ns();
    t_measure = t0 + (uint64_t)(cfg.warmup * 1e9);
    t_end = t_measure + (uint64_t)(cfg.duration * 1e9);
    double cpu0 = cpu_s();
    for (int i = 0; i < cfg.connections; i++) pthread_create(&ws[i].th, NULL, worker_main, &ws[i]);
    double cpu_m0 = 0, cpu_m1 = 0;
    if (!cfg.max_requests) {
        /* the client's own CPU over the measured window */
        struct timespec ts = {(time_t)cfg.warmup, (long)((cfg.warmup - (time_t)cfg.warmup) * 1e9)};
        nanosleep(&ts, NULL);
        cpu_m0 = cpu_s();
        ts.tv_sec = (time_t)cfg.duration;
        ts.tv_nsec = (long)((cfg.duration - (time_t)cfg.duration) * 1e9);
        nanosleep(&ts, NULL);
        cpu_m1 = cpu_s();
    }
    for (int i = 0; i < cfg.connections; i++) pthread_join(ws[i].th, NULL);
    uint64_t t1 = now_ns();
    double wall = (double)(t1 - t0) / 1e9;

    long done = 0, measured = 0, nlat = 0, errors[E_KINDS] = {0};
    for (int i = 0; i < cfg.connections; i++) {
        done += ws[i].done_total;
        measured += ws[i].done_measured;
        nlat += ws[i].nlat;
        for (int k = 0; k < E_KINDS; k++) errors[k] += ws[i].errors[k];
    }
    double *lat = malloc((size_t)(nlat ? nlat : 1) * sizeof *lat);
    long j = 0;
    for (int i = 0; i < cfg.connections; i++) {
        memcpy(lat + j, ws[i].lat, (size_t)ws[i].nlat * sizeof *lat);
        j += ws[i].nlat;
        free(ws[i].lat);
    }
    qsort(lat, (size_t)nlat, sizeof *lat, cmp_double);
#define PCT(p) (nlat ? lat[(long)((p) / 100.0 * (nlat - 1))] : 0.0)
    double window = cfg.max_requests ? wall : cfg.duration;
    long errors_total = 0;
    printf("{\"connections\": %d, \"proxy\": %d, \"tls\": %d, \"requests\": %ld, \"completed\": %ld, "
           "\"duration_s\": %.6f, \"wall_s\": %.6f, \"requests_per_s\": %.1f, "
           "\"latency_us\": {\"p50\": %.1f, \"p90\": %.1f, \"p99\": %.1f, \"max\": %.1f}, "
           "\"loadgen_cpu_s\": %.4f, \"loadgen_cpu_measured_s\": %.4f, \"errors\": {",
           cfg.connections, cfg.proxy, cfg.tls, measured, done, window, wall, measured / window, PCT(50), PCT(90),
           PCT(99), nlat ? lat[nlat - 1] : 0.0, cpu_s() - cpu0, cpu_m1 - cpu_m0);
    for (int k = 0; k < E_KINDS; k++) {
        printf("%s\"%s\": %ld", k ? ", " : "", E_NAMES[k], errors[k]);
        errors_total += errors[k];
    }
    printf("}, \"errors_total\": %ld}\n", errors_total);
    free(lat);
    free(ws);
    free(msg);
    if (ctx) SSL_CTX_free(ctx);
    return 0;
}
