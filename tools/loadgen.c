/* The C load generator of tools/bench_server: one process, one epoll loop.

   loadgen PORT CONNS INFLIGHT SIZE WARMUP SECONDS

   Opens CONNS connections to 127.0.0.1:PORT and keeps INFLIGHT requests in
   flight on each: a request is a frame (u32 big-endian length | payload of
   SIZE bytes, SIZE >= 8); its payload starts with the connection's request
   number (u64 little-endian) and is 'x' after it.  Every reply must be the
   same frame, in order: a wrong length, number or byte stops the run with
   an error naming the connection and what was expected (exit status 2).
   After WARMUP seconds it counts replies and times each request (send to
   complete reply, CLOCK_MONOTONIC) for SECONDS seconds, then prints one
   line:  count=N p50_us=X p99_us=Y cpu_s=Z
   (cpu_s: this process's user + system time over the measured seconds).

   Why C: the Python load clients use about a core to drive 50x16 requests,
   and on a 2-core machine that core is taken from the server they measure.
   This one uses a fraction of that, so the servers get the machine. */

#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    int fd;
    uint64_t next_send;     /* number of the next request to send */
    uint64_t next_reply;    /* number of the reply expected next */
    double *sent_at;        /* ring of INFLIGHT send times, by request number */
    unsigned char *in;      /* received bytes not yet a whole frame */
    size_t in_len;
    unsigned char *out;     /* requests not yet taken by the socket */
    size_t out_len, out_cap;
    int want_out;           /* registered for EPOLLOUT */
} conn_t;

static size_t frame_len, size_;
static unsigned char *filler;  /* SIZE - 8 bytes of 'x' */
static long inflight;
static int ep;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static double cpu_s(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6 + (double)ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec * 1e-6;
}

static void die(const char *what) {
    fprintf(stderr, "loadgen: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void *grow(void *p, size_t n) {
    void *q = realloc(p, n);
    if (!q) die("out of memory");
    return q;
}

/* Queue request number `seq` on `c` and note when it was sent. */
static void queue_request(conn_t *c, double t) {
    if (c->out_len + frame_len > c->out_cap) {
        c->out_cap = (c->out_len + frame_len) * 2;
        c->out = grow(c->out, c->out_cap);
    }
    unsigned char *f = c->out + c->out_len;
    uint32_t be = htonl((uint32_t)size_);
    memcpy(f, &be, 4);
    uint64_t seq = c->next_send++;
    memcpy(f + 4, &seq, 8); /* little-endian on every machine we run on */
    memcpy(f + 12, filler, size_ - 8);
    c->out_len += frame_len;
    c->sent_at[seq % (uint64_t)inflight] = t;
}

static void set_out_interest(conn_t *c, int want) {
    if (want == c->want_out) return;
    struct epoll_event ev = {.events = EPOLLIN | (want ? EPOLLOUT : 0), .data.ptr = c};
    if (epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev) < 0) die("epoll_ctl");
    c->want_out = want;
}

static void flush_out(conn_t *c) {
    size_t done = 0;
    while (done < c->out_len) {
        ssize_t n = send(c->fd, c->out + done, c->out_len - done, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR) break;
            die("send");
        }
        done += (size_t)n;
    }
    memmove(c->out, c->out + done, c->out_len - done);
    c->out_len -= done;
    set_out_interest(c, c->out_len > 0);
}

static int by_value(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    if (argc != 7) {
        fprintf(stderr, "usage: loadgen PORT CONNS INFLIGHT SIZE WARMUP SECONDS\n");
        return 1;
    }
    int port = atoi(argv[1]);
    long conns = atol(argv[2]);
    inflight = atol(argv[3]);
    size_ = (size_t)atol(argv[4]);
    double warmup = atof(argv[5]), seconds = atof(argv[6]);
    if (port <= 0 || conns <= 0 || inflight <= 0 || size_ < 8 || seconds <= 0) {
        fprintf(stderr, "loadgen: bad arguments (SIZE must be at least 8)\n");
        return 1;
    }
    frame_len = 4 + size_;
    filler = grow(NULL, size_ - 8 + 1);
    memset(filler, 'x', size_ - 8);
    size_t in_cap = frame_len * (size_t)inflight + 65536;

    ep = epoll_create1(0);
    if (ep < 0) die("epoll_create1");
    conn_t *cs = calloc((size_t)conns, sizeof *cs);
    if (!cs) die("out of memory");
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    for (long i = 0; i < conns; i++) {
        conn_t *c = &cs[i];
        c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        if (c->fd < 0) die("socket");
        int one = 1;
        setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (connect(c->fd, (struct sockaddr *)&addr, sizeof addr) < 0 && errno != EINPROGRESS)
            die("connect");
        c->sent_at = calloc((size_t)inflight, sizeof(double));
        c->in = grow(NULL, in_cap);
        if (!c->sent_at) die("out of memory");
        struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
        c->want_out = 1; /* until connected */
        if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) < 0) die("epoll_ctl");
    }
    double start = now_s();
    for (long i = 0; i < conns; i++)
        for (long k = 0; k < inflight; k++) queue_request(&cs[i], start);

    double measure_from = start + warmup, end = measure_from + seconds, cpu0 = -1;
    size_t lat_len = 0, lat_cap = 1 << 20;
    float *lat = grow(NULL, lat_cap * sizeof *lat);
    uint64_t count = 0;
    struct epoll_event evs[256];
    for (;;) {
        double t = now_s();
        if (cpu0 < 0 && t >= measure_from) cpu0 = cpu_s();
        if (t >= end) break;
        int wait_ms = (int)((end - t) * 1000) + 1;
        int n = epoll_wait(ep, evs, 256, wait_ms);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int e = 0; e < n; e++) {
            conn_t *c = evs[e].data.ptr;
            if (evs[e].events & (EPOLLERR | EPOLLHUP) && !(evs[e].events & EPOLLIN)) {
                fprintf(stderr, "loadgen: connection %ld failed or was closed\n", (long)(c - cs));
                return 2;
            }
            if (evs[e].events & EPOLLIN) {
                ssize_t got = recv(c->fd, c->in + c->in_len, in_cap - c->in_len, 0);
                if (got == 0) {
                    fprintf(stderr, "loadgen: the server closed connection %ld\n", (long)(c - cs));
                    return 2;
                }
                if (got < 0) {
                    if (errno == EAGAIN || errno == EINTR) goto out;
                    die("recv");
                }
                c->in_len += (size_t)got;
                size_t off = 0;
                double done_at = now_s();
                while (c->in_len - off >= frame_len) {
                    unsigned char *f = c->in + off;
                    uint32_t be;
                    uint64_t seq;
                    memcpy(&be, f, 4);
                    memcpy(&seq, f + 4, 8);
                    if (ntohl(be) != size_ || seq != c->next_reply ||
                        memcmp(f + 12, filler, size_ - 8) != 0) {
                        fprintf(stderr,
                                "loadgen: connection %ld: expected the reply to request %llu "
                                "(%zu bytes), got a frame of %u bytes numbered %llu\n",
                                (long)(c - cs), (unsigned long long)c->next_reply, size_,
                                ntohl(be), (unsigned long long)seq);
                        return 2;
                    }
                    if (done_at >= measure_from) {
                        if (lat_len == lat_cap) {
                            lat_cap *= 2;
                            lat = grow(lat, lat_cap * sizeof *lat);
                        }
                        lat[lat_len++] = (float)(done_at - c->sent_at[seq % (uint64_t)inflight]);
                        count++;
                    }
                    c->next_reply++;
                    off += frame_len;
                    queue_request(c, done_at);
                }
                memmove(c->in, c->in + off, c->in_len - off);
                c->in_len -= off;
                if (c->out_len) flush_out(c);
            }
        out:
            if (evs[e].events & EPOLLOUT) flush_out(c);
        }
    }
    double cpu = cpu_s() - (cpu0 < 0 ? cpu_s() : cpu0);
    qsort(lat, lat_len, sizeof *lat, by_value);
    double p50 = lat_len ? lat[lat_len / 2] * 1e6 : -1, p99 = lat_len ? lat[lat_len * 99 / 100] * 1e6 : -1;
    printf("count=%llu p50_us=%.1f p99_us=%.1f cpu_s=%.3f\n", (unsigned long long)count, p50, p99,
           cpu);
    return 0;
}
