/* The null policy service of bench/policy_bench.py (configuration "null"):
 * a Postfix SMTP access policy delegation server (SMTPD_POLICY_README) that
 * answers every request "action=DUNNO" at once, without looking at it.
 * What any policy service costs Postfix at the least: smtpd's side of the
 * round trip, with (nearly) nothing on the service's side.
 *
 *     cc -O2 -o null_policy null_policy.c && ./null_policy 127.0.0.1 PORT
 *
 * One thread, epoll, non-blocking sockets.  A request ends with an empty
 * line ("\n\n"); requests split over reads are followed by the last byte
 * seen per connection.  Stops on SIGTERM (the default action). */

#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_FD 65536
#define ANSWER "action=DUNNO\n\n"

static unsigned char last[MAX_FD];   /* the last byte read on each connection */

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s ADDRESS PORT\n", argv[0]);
        return 2;
    }
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(argv[2]))};
    if (inet_pton(AF_INET, argv[1], &sa.sin_addr) != 1) {
        fprintf(stderr, "not an IPv4 address: %s\n", argv[1]);
        return 2;
    }
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (ls < 0 || bind(ls, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(ls, 1024) < 0) {
        perror("listen");
        return 1;
    }
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = ls};
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
    printf("null policy listening on %s:%s\n", argv[1], argv[2]);
    fflush(stdout);

    struct epoll_event events[256];
    char buf[16384];
    char out[sizeof ANSWER * 64];
    for (;;) {
        int n = epoll_wait(ep, events, 256, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            perror("epoll_wait");
            return 1;
        }
        for (int i = 0; i < n; i++) {
            int fd = events[i].data.fd;
            if (fd == ls) {
                int c;
                while ((c = accept4(ls, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
                    if (c >= MAX_FD) {
                        close(c);
                        continue;
                    }
                    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    last[c] = 0;
                    struct epoll_event cev = {.events = EPOLLIN | EPOLLRDHUP, .data.fd = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &cev);
                }
                continue;
            }
            ssize_t got = read(fd, buf, sizeof buf);
            if (got < 0 && (errno == EAGAIN || errno == EINTR))
                continue;
            if (got <= 0) {
                close(fd);                    /* also leaves the epoll set */
                continue;
            }
            /* Count the requests that end in what was read: each "\n\n". */
            int answers = 0;
            unsigned char prev = last[fd];
            for (ssize_t k = 0; k < got; k++) {
                unsigned char b = (unsigned char)buf[k];
                if (b == '\n' && prev == '\n') {
                    answers++;
                    b = 0;                    /* "\n\n\n" is one request and the start of the next */
                }
                prev = b;
            }
            last[fd] = prev;
            if (answers == 0)
                continue;
            if (answers > 64)
                answers = 64;                 /* Postfix sends one request and waits for its answer */
            size_t len = 0;
            for (int a = 0; a < answers; a++) {
                memcpy(out + len, ANSWER, sizeof ANSWER - 1);
                len += sizeof ANSWER - 1;
            }
            if (write(fd, out, len) != (ssize_t)len)
                close(fd);                    /* a full socket buffer cannot happen here; Postfix reconnects */
        }
    }
}
