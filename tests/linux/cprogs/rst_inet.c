/* IPv4/IPv6 sockets with their addresses and options: a TCP listener (O_NONBLOCK, a small
 * backlog, TCP_NODELAY and TCP_KEEPIDLE, no SO_REUSEADDR) that accepts after the restore; a
 * UDP socket bound to 127.0.0.1 (SO_BROADCAST, IP_TTL 33, a set SO_RCVBUF), a UDP socket
 * connected to it (its ephemeral port kept), a UDP socket bound to ::1 (IPV6_V6ONLY), and
 * a connected UDP socket shut down for reading (poll reports POLLRDHUP: datagram_poll).
 * After the restore every address, port and option is as it was, and they all pass data. */
#include "check.h"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>

static struct sockaddr_in v4(int port)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port) };
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	return a;
}

static int opt(int s, int level, int name)
{
	int v = -1;
	socklen_t l = sizeof(v);
	getsockopt(s, level, name, &v, &l);
	return v;
}

static int port_of(int s)
{
	struct sockaddr_in6 a;
	socklen_t l = sizeof(a);
	getsockname(s, (void *)&a, &l);
	return ntohs(a.sin6_port); /* sin_port and sin6_port are at the same offset */
}

int main(void)
{
	catch_usr1();
	int one = 1, idle = 77, ttl = 33, rcvbuf = 50000;
	int tcp = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = v4(0);
	CHECK(bind(tcp, (void *)&a, sizeof(a)) == 0, "bind tcp");
	CHECK(listen(tcp, 3) == 0, "listen");
	setsockopt(tcp, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	setsockopt(tcp, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
	fcntl(tcp, F_SETFL, O_NONBLOCK);
	int u1 = socket(AF_INET, SOCK_DGRAM, 0);
	CHECK(bind(u1, (void *)&a, sizeof(a)) == 0, "bind udp");
	setsockopt(u1, SOL_SOCKET, SO_BROADCAST, &one, sizeof(one));
	setsockopt(u1, IPPROTO_IP, IP_TTL, &ttl, sizeof(ttl));
	setsockopt(u1, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
	rcvbuf = opt(u1, SOL_SOCKET, SO_RCVBUF);
	int u2 = socket(AF_INET, SOCK_DGRAM, 0);
	struct sockaddr_in to = v4(port_of(u1));
	CHECK(connect(u2, (void *)&to, sizeof(to)) == 0, "connect udp");
	int u6 = socket(AF_INET6, SOCK_DGRAM, 0);
	setsockopt(u6, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
	struct sockaddr_in6 a6 = { .sin6_family = AF_INET6, .sin6_addr = in6addr_loopback };
	CHECK(bind(u6, (void *)&a6, sizeof(a6)) == 0, "bind udp6");
	int u3 = socket(AF_INET, SOCK_DGRAM, 0);
	CHECK(connect(u3, (void *)&to, sizeof(to)) == 0, "connect u3");
	CHECK(shutdown(u3, SHUT_RD) == 0, "shutdown u3: %s", strerror(errno));
	struct pollfd p0 = { .fd = u2, .events = POLLIN | POLLRDHUP };
	CHECK(poll(&p0, 1, 0) == 0, "a UDP socket not shut down reports %#x", p0.revents);
	int ports[4] = { port_of(tcp), port_of(u1), port_of(u2), port_of(u6) };
	say("READY");
	wait_usr1();
	int now[4] = { port_of(tcp), port_of(u1), port_of(u2), port_of(u6) };
	for (int i = 0; i < 4; i++)
		CHECK(now[i] == ports[i], "socket %d: port %d, was %d", i, now[i], ports[i]);
	/* the listener */
	CHECK(accept(tcp, NULL, NULL) == -1 && errno == EAGAIN, "listener lost O_NONBLOCK");
	CHECK(opt(tcp, IPPROTO_TCP, TCP_NODELAY) == 1, "TCP_NODELAY lost");
	CHECK(opt(tcp, IPPROTO_TCP, TCP_KEEPIDLE) == 77, "TCP_KEEPIDLE %d",
	      opt(tcp, IPPROTO_TCP, TCP_KEEPIDLE));
	CHECK(opt(tcp, SOL_SOCKET, SO_REUSEADDR) == 0, "SO_REUSEADDR appeared");
	CHECK(opt(tcp, SOL_SOCKET, SO_ACCEPTCONN) == 1, "not listening");
	int c = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in ta = v4(ports[0]);
	CHECK(connect(c, (void *)&ta, sizeof(ta)) == 0, "connect to %d: %s", ports[0],
	      strerror(errno));
	struct pollfd pfd = { .fd = tcp, .events = POLLIN };
	CHECK(poll(&pfd, 1, 2000) == 1, "no connection to accept");
	int x = accept(tcp, NULL, NULL);
	CHECK(x >= 0 && write(c, "tcp!", 4) == 4, "accept: %s", strerror(errno));
	char buf[16] = { 0 };
	CHECK(x >= 0 && read(x, buf, 4) == 4 && !memcmp(buf, "tcp!", 4), "tcp data");
	/* UDP */
	CHECK(opt(u1, SOL_SOCKET, SO_BROADCAST) == 1, "SO_BROADCAST lost");
	CHECK(opt(u1, IPPROTO_IP, IP_TTL) == 33, "IP_TTL %d", opt(u1, IPPROTO_IP, IP_TTL));
	CHECK(opt(u1, SOL_SOCKET, SO_RCVBUF) == rcvbuf, "SO_RCVBUF %d, want %d",
	      opt(u1, SOL_SOCKET, SO_RCVBUF), rcvbuf);
	CHECK(opt(u6, IPPROTO_IPV6, IPV6_V6ONLY) == 1, "IPV6_V6ONLY lost");
	CHECK(send(u2, "dgram", 5, 0) == 5, "connected send: %s", strerror(errno));
	struct sockaddr_in from;
	socklen_t fl = sizeof(from);
	memset(buf, 0, sizeof(buf));
	CHECK(recvfrom(u1, buf, sizeof(buf), 0, (void *)&from, &fl) == 5 && !memcmp(buf, "dgram", 5),
	      "udp data '%s'", buf);
	CHECK(ntohs(from.sin_port) == ports[2], "sender port %d, want %d", ntohs(from.sin_port),
	      ports[2]);
	CHECK(sendto(u1, "reply", 5, 0, (void *)&from, fl) == 5, "reply");
	CHECK(recv(u2, buf, sizeof(buf), 0) == 5 && !memcmp(buf, "reply", 5), "reply data");
	int n6 = socket(AF_INET6, SOCK_DGRAM, 0);
	a6.sin6_port = htons(ports[3]);
	CHECK(sendto(n6, "six", 3, 0, (void *)&a6, sizeof(a6)) == 3, "sendto ::1");
	CHECK(recv(u6, buf, sizeof(buf), 0) == 3 && !memcmp(buf, "six", 3), "udp6 data");
	struct pollfd p3 = { .fd = u3, .events = POLLIN | POLLRDHUP };
	CHECK(poll(&p3, 1, 0) == 1 && (p3.revents & POLLRDHUP), "u3 lost its shutdown (%#x)",
	      p3.revents);
	return finish();
}
