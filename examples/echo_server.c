/* echo_server.c - a TCP echo server whose handlers know their client without
 * being told.
 *
 * The server listens on 127.0.0.1, on a port the system picks, and hands each
 * connection to a pool job. The job sets the context variable client_addr
 * once; render_goodbye(), three calls down, reads it from there: no function
 * in between takes an address parameter. When a client sends an empty line
 * the server answers "Good bye, client @ <addr>" and closes.
 *
 * The program drives itself: N client threads connect at once, each from its
 * own source port, and their connections are served side by side on the
 * pool. Each client checks that the good bye names its own address.
 * Loopback only. Every socket has a timeout, so a failure ends the program
 * instead of hanging it. Exits 0 when every client got its own address back.
 */
#include <ctxpool.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

enum { CLIENTS = 4, TIMEOUT_S = 10, LINE_MAX_LEN = 128 };

static cp_var *client_addr; /* "ip:port" of the connection being served */

/* ---- Small socket helpers. ---- */

static void set_timeouts(int fd)
{
    struct timeval tv = {.tv_sec = TIMEOUT_S};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

static void format_addr(const struct sockaddr_in *sa, char *out, size_t size)
{
    char ip[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &sa->sin_addr, ip, sizeof ip);
    snprintf(out, size, "%s:%u", ip, (unsigned)ntohs(sa->sin_port));
}

static bool send_line(int fd, const char *line)
{
    char buf[LINE_MAX_LEN + 2];
    int n = snprintf(buf, sizeof buf, "%s\n", line);
    if (n < 0 || (size_t)n >= sizeof buf)
        return false;
    for (int sent = 0; sent < n;) {
        ssize_t k = send(fd, buf + sent, (size_t)(n - sent), MSG_NOSIGNAL);
        if (k <= 0)
            return false;
        sent += (int)k;
    }
    return true;
}

/* Read one line (without its newline), a byte at a time: short and simple.
 * false on end of stream, error, timeout or an over-long line. */
static bool recv_line(int fd, char *line, size_t size)
{
    size_t len = 0;
    for (;;) {
        char c;
        if (recv(fd, &c, 1, 0) != 1)
            return false;
        if (c == '\n')
            break;
        if (len + 1 >= size)
            return false;
        line[len++] = c;
    }
    line[len] = '\0';
    return true;
}

/* ---- The server: one pool job per connection. ---- */

/* Three calls down from the handler, and no address parameter anywhere. */
static void render_goodbye(char *out, size_t size)
{
    snprintf(out, size, "Good bye, client @ %s",
             (const char *)cp_var_get_or(client_addr, "(unknown)"));
}

static void respond(const char *line, char *out, size_t size)
{
    if (line[0] == '\0')
        render_goodbye(out, size);
    else
        snprintf(out, size, "%s", line); /* echo */
}

static bool serve_line(int fd, const char *line)
{
    char reply[LINE_MAX_LEN];
    respond(line, reply, sizeof reply);
    return send_line(fd, reply) && line[0] != '\0';
}

static void *handle_connection(void *arg)
{
    int fd = (int)(intptr_t)arg;
    struct sockaddr_in peer;
    socklen_t len = sizeof peer;
    char *addr = malloc(32);
    if (addr && getpeername(fd, (struct sockaddr *)&peer, &len) == 0) {
        format_addr(&peer, addr, 32);
        /* Set once for this job; the context frees it (free_value). */
        if (cp_var_set(client_addr, addr, NULL) != 0)
            free(addr);
    } else {
        free(addr);
    }
    set_timeouts(fd);
    char line[LINE_MAX_LEN];
    while (recv_line(fd, line, sizeof line) && serve_line(fd, line))
        ;
    close(fd);
    return NULL;
}

/* ---- The clients: threads that check what comes back. ---- */

struct client {
    int index;
    unsigned short server_port;
    char addr[32];     /* its own address, as the server should see it */
    char goodbye[LINE_MAX_LEN];
    bool ok;
};

static void *run_client(void *arg)
{
    struct client *c = arg;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    bool ok = fd >= 0;
    if (ok) {
        set_timeouts(fd);
        /* Bind our own source port first, so we know our address. */
        struct sockaddr_in me = {.sin_family = AF_INET,
                                 .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        struct sockaddr_in server = {.sin_family = AF_INET,
                                     .sin_port = htons(c->server_port),
                                     .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        socklen_t len = sizeof me;
        ok = bind(fd, (struct sockaddr *)&me, sizeof me) == 0 &&
             getsockname(fd, (struct sockaddr *)&me, &len) == 0 &&
             connect(fd, (struct sockaddr *)&server, sizeof server) == 0;
        if (ok)
            format_addr(&me, c->addr, sizeof c->addr);
    }
    char hello[64], echo[LINE_MAX_LEN];
    snprintf(hello, sizeof hello, "hello from client %d", c->index);
    ok = ok && send_line(fd, hello) && recv_line(fd, echo, sizeof echo) &&
         strcmp(echo, hello) == 0;
    ok = ok && send_line(fd, "") && recv_line(fd, c->goodbye, sizeof c->goodbye);
    if (fd >= 0)
        close(fd);
    char expected[LINE_MAX_LEN];
    snprintf(expected, sizeof expected, "Good bye, client @ %s", c->addr);
    c->ok = ok && strcmp(c->goodbye, expected) == 0;
    return NULL;
}

/* ---- Main: server and clients in one process. ---- */

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    client_addr = cp_var_new("client_addr", free);
    cp_pool *pool = NULL;
    /* One worker per client: a handler holds its worker while it waits for
     * its client's next line. */
    cp_pool_options options = {.threads = CLIENTS, .name = "echo"};
    int listener = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sa;
    if (!client_addr || listener < 0 || cp_pool_new(&pool, &options) != 0 ||
        bind(listener, (struct sockaddr *)&sa, sizeof sa) != 0 ||
        listen(listener, CLIENTS) != 0 ||
        getsockname(listener, (struct sockaddr *)&sa, &len) != 0) {
        perror("echo_server: cannot start");
        return 1;
    }
    unsigned short port = ntohs(sa.sin_port);
    printf("echo server listening on 127.0.0.1:%u, %d clients at once\n", port, CLIENTS);

    struct client clients[CLIENTS];
    pthread_t threads[CLIENTS];
    int started = 0;
    for (int i = 0; i < CLIENTS; i++)
        clients[i] = (struct client){.index = i + 1, .server_port = port};
    while (started < CLIENTS &&
           pthread_create(&threads[started], NULL, run_client, &clients[started]) == 0)
        started++;

    /* Accept each connection and hand it to the pool; poll bounds the wait. */
    int accepted = 0;
    cp_future *futures[CLIENTS];
    while (accepted < started) {
        struct pollfd p = {.fd = listener, .events = POLLIN};
        if (poll(&p, 1, TIMEOUT_S * 1000) != 1)
            break;
        int fd = accept(listener, NULL, NULL);
        if (fd < 0)
            break;
        if (cp_pool_submit(pool, handle_connection, (void *)(intptr_t)fd,
                           &futures[accepted]) != 0) {
            close(fd);
            break;
        }
        accepted++;
    }
    for (int i = 0; i < started; i++)
        pthread_join(threads[i], NULL);
    for (int i = 0; i < accepted; i++) {
        cp_future_wait(futures[i], NULL);
        cp_future_free(futures[i]);
    }
    close(listener);
    cp_pool_free(pool);
    cp_var_free(client_addr);

    int good = 0;
    for (int i = 0; i < CLIENTS; i++) {
        printf("client %d from %-15s got \"%s\"%s\n", clients[i].index, clients[i].addr,
               clients[i].goodbye, clients[i].ok ? "" : "  <- WRONG");
        good += clients[i].ok;
    }
    if (good == CLIENTS)
        printf("ok: each of the %d clients got its own address back, though "
               "render_goodbye() takes no address\n", CLIENTS);
    else
        printf("FAIL: %d of %d clients got their own address back\n", good, CLIENTS);
    return good == CLIENTS ? 0 : 1;
}
