/* Listening TCP sockets, IPv4 on 127.0.0.1 and IPv6 (v6only) on ::1, with a backlog and
 * options: after the restore both accept a connection on the same port. */
#include "check.h"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

static int listener(int family, int *port)
{
	int s = socket(family, SOCK_STREAM, 0), one = 1;
	setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	setsockopt(s, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
	struct sockaddr_storage ss = { 0 };
	socklen_t len;
	if (family == AF_INET) {
		struct sockaddr_in *a = (void *)&ss;
		a->sin_family = AF_INET;
		a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		len = sizeof(*a);
	} else {
		struct sockaddr_in6 *a = (void *)&ss;
		setsockopt(s, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
		a->sin6_family = AF_INET6;
		a->sin6_addr = in6addr_loopback;
		len = sizeof(*a);
	}
	CHECK(bind(s, (void *)&ss, len) == 0, "bind: %s", strerror(errno));
	CHECK(listen(s, 17) == 0, "listen");
	getsockname(s, (void *)&ss, &len);
	*port = ntohs(family == AF_INET ? ((struct sockaddr_in *)&ss)->sin_port
					: ((struct sockaddr_in6 *)&ss)->sin6_port);
	return s;
}

static void check_accepts(int s, int family, int port)
{
	int c = socket(family, SOCK_STREAM, 0);
	struct sockaddr_storage ss = { 0 };
	socklen_t len;
	if (family == AF_INET) {
		struct sockaddr_in *a = (void *)&ss;
		a->sin_family = AF_INET;
		a->sin_port = htons(port);
		a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		len = sizeof(*a);
	} else {
		struct sockaddr_in6 *a = (void *)&ss;
		a->sin6_family = AF_INET6;
		a->sin6_port = htons(port);
		a->sin6_addr = in6addr_loopback;
		len = sizeof(*a);
	}
	CHECK(connect(c, (void *)&ss, len) == 0, "connect to port %d: %s", port, strerror(errno));
	int a = accept(s, NULL, NULL);
	CHECK(a >= 0, "accept on port %d: %s", port, strerror(errno));
	CHECK(write(c, "hi", 2) == 2, "write");
	char buf[2];
	CHECK(a >= 0 && read(a, buf, 2) == 2 && !memcmp(buf, "hi", 2), "data over the connection");
	int val = 0;
	socklen_t vl = sizeof(val);
	getsockopt(s, SOL_SOCKET, SO_KEEPALIVE, &val, &vl);
	CHECK(val, "SO_KEEPALIVE lost on port %d", port);
	close(c);
	close(a);
}

int main(void)
{
	catch_usr1();
	int p4, p6;
	int s4 = listener(AF_INET, &p4), s6 = listener(AF_INET6, &p6);
	say("READY");
	wait_usr1();
	check_accepts(s4, AF_INET, p4);
	check_accepts(s6, AF_INET6, p6);
	return finish();
}
