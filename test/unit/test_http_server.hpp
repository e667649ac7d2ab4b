// A tiny HTTP/1.1 server on 127.0.0.1 (ephemeral port) for the Fly client's unit tests: one thread accepts,
// one thread per connection answers requests in order with keep-alive. A handler decides each reply, which can
// also be delayed, never sent (hang), or replaced by a TCP reset or a plain close. Header-only because the
// test glob compiles only *_test.cpp files.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace pgfly {
namespace test {

struct ReceivedRequest {
	std::string method;
	// As sent: path plus "?query".
	std::string target;
	// Lower-case names; repeated headers joined with ", ".
	std::map<std::string, std::string> headers;
	std::string body;
	int connection = 0;

	bool
	HasHeader(const std::string &name) const {
		return headers.count(name) != 0;
	}
	std::string
	Header(const std::string &name) const {
		auto found = headers.find(name);
		return found == headers.end() ? "" : found->second;
	}
};

struct Reply {
	enum class Action { kRespond, kHang, kReset, kClose };

	int status = 200;
	std::vector<std::pair<std::string, std::string>> headers;
	std::string body;
	int delay_ms = 0;
	Action action = Action::kRespond;
	// Send the body with Transfer-Encoding: chunked instead of Content-Length.
	bool chunked = false;

	static Reply
	Json(int status, std::string body) {
		Reply reply;
		reply.status = status;
		reply.body = std::move(body);
		reply.headers.emplace_back("Content-Type", "application/json");
		return reply;
	}
};

class TestHttpServer {
public:
	using Handler = std::function<Reply(const ReceivedRequest &)>;

	explicit TestHttpServer(Handler handler) : handler_(std::move(handler)) {
		listen_fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (listen_fd_ < 0) {
			throw std::runtime_error("socket failed");
		}
		const int one = 1;
		setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		sockaddr_in address = {};
		address.sin_family = AF_INET;
		address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		address.sin_port = 0;
		if (bind(listen_fd_, reinterpret_cast<sockaddr *>(&address), sizeof(address)) != 0 ||
		    listen(listen_fd_, 128) != 0) {
			close(listen_fd_);
			throw std::runtime_error("bind/listen on 127.0.0.1 failed");
		}
		socklen_t length = sizeof(address);
		getsockname(listen_fd_, reinterpret_cast<sockaddr *>(&address), &length);
		port_ = ntohs(address.sin_port);
		acceptor_ = std::thread([this] { AcceptLoop(); });
	}

	~TestHttpServer() { Stop(); }

	TestHttpServer(const TestHttpServer &) = delete;
	TestHttpServer &operator=(const TestHttpServer &) = delete;

	int
	Port() const {
		return port_;
	}
	std::string
	BaseUrl() const {
		return "http://127.0.0.1:" + std::to_string(port_);
	}
	int
	AcceptedConnections() const {
		return accepted_.load();
	}
	std::vector<ReceivedRequest>
	Requests() const {
		std::lock_guard<std::mutex> guard(mutex_);
		return requests_;
	}
	size_t
	RequestCount() const {
		std::lock_guard<std::mutex> guard(mutex_);
		return requests_.size();
	}

	void
	Stop() {
		if (stopping_.exchange(true)) {
			return;
		}
		if (acceptor_.joinable()) {
			acceptor_.join();
		}
		std::vector<std::thread> workers;
		{
			std::lock_guard<std::mutex> guard(mutex_);
			workers.swap(workers_);
		}
		for (auto &worker : workers) {
			worker.join();
		}
		close(listen_fd_);
	}

	// A port on 127.0.0.1 where nothing listens (bound, then released).
	static int
	UnusedPort() {
		const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		sockaddr_in address = {};
		address.sin_family = AF_INET;
		address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		bind(fd, reinterpret_cast<sockaddr *>(&address), sizeof(address));
		socklen_t length = sizeof(address);
		getsockname(fd, reinterpret_cast<sockaddr *>(&address), &length);
		close(fd);
		return ntohs(address.sin_port);
	}

private:
	static constexpr int kPollMs = 20;

	void
	AcceptLoop() {
		while (!stopping_.load()) {
			pollfd descriptor = {listen_fd_, POLLIN, 0};
			if (poll(&descriptor, 1, kPollMs) <= 0) {
				continue;
			}
			const int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
			if (fd < 0) {
				continue;
			}
			const int connection = ++accepted_;
			std::lock_guard<std::mutex> guard(mutex_);
			workers_.emplace_back([this, fd, connection] { Serve(fd, connection); });
		}
	}

	// Waits for readable data; false once the server stops.
	bool
	WaitReadable(int fd) {
		while (!stopping_.load()) {
			pollfd descriptor = {fd, POLLIN, 0};
			if (poll(&descriptor, 1, kPollMs) > 0) {
				return true;
			}
		}
		return false;
	}

	void
	SleepMs(int milliseconds) {
		const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(milliseconds);
		while (!stopping_.load() && std::chrono::steady_clock::now() < until) {
			std::this_thread::sleep_for(std::chrono::milliseconds(5));
		}
	}

	static bool
	SendAll(int fd, const std::string &data) {
		size_t sent = 0;
		while (sent < data.size()) {
			const ssize_t n = send(fd, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
			if (n <= 0) {
				return false;
			}
			sent += static_cast<size_t>(n);
		}
		return true;
	}

	static std::string
	Lower(std::string text) {
		for (auto &c : text) {
			if (c >= 'A' && c <= 'Z') {
				c = static_cast<char>(c - 'A' + 'a');
			}
		}
		return text;
	}

	// Parses one request from buffer (removing it); false when more bytes are needed.
	static bool
	Parse(std::string &buffer, ReceivedRequest &request) {
		const size_t end = buffer.find("\r\n\r\n");
		if (end == std::string::npos) {
			return false;
		}
		const std::string head = buffer.substr(0, end);
		size_t line_end = head.find("\r\n");
		const std::string request_line = head.substr(0, line_end);
		const size_t first_space = request_line.find(' ');
		const size_t second_space = request_line.find(' ', first_space + 1);
		request.method = request_line.substr(0, first_space);
		request.target = request_line.substr(first_space + 1, second_space - first_space - 1);
		request.headers.clear();
		while (line_end != std::string::npos && line_end < head.size()) {
			const size_t next = head.find("\r\n", line_end + 2);
			const std::string line =
				head.substr(line_end + 2, next == std::string::npos ? std::string::npos : next - line_end - 2);
			const size_t colon = line.find(':');
			if (colon != std::string::npos) {
				std::string name = Lower(line.substr(0, colon));
				std::string value = line.substr(colon + 1);
				value.erase(0, value.find_first_not_of(' '));
				auto &slot = request.headers[name];
				slot = slot.empty() ? value : slot + ", " + value;
			}
			line_end = next;
		}
		size_t length = 0;
		if (request.HasHeader("content-length")) {
			length = std::stoul(request.Header("content-length"));
		}
		if (buffer.size() < end + 4 + length) {
			return false;
		}
		request.body = buffer.substr(end + 4, length);
		buffer.erase(0, end + 4 + length);
		return true;
	}

	static const char *
	Reason(int status) {
		switch (status) {
		case 200:
			return "OK";
		case 201:
			return "Created";
		case 202:
			return "Accepted";
		case 204:
			return "No Content";
		case 302:
			return "Found";
		case 401:
			return "Unauthorized";
		case 404:
			return "Not Found";
		case 429:
			return "Too Many Requests";
		case 500:
			return "Internal Server Error";
		case 503:
			return "Service Unavailable";
		default:
			return "Status";
		}
	}

	void
	Serve(int fd, int connection) {
		std::string buffer;
		char chunk[16384];
		bool open = true;
		while (open && !stopping_.load()) {
			ReceivedRequest request;
			while (!Parse(buffer, request)) {
				if (!buffer.empty() && !(buffer[0] >= 'A' && buffer[0] <= 'Z')) {
					// Not HTTP (a TLS ClientHello, say): answer as a plain HTTP server would, and hang up.
					SendAll(fd, "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
					open = false;
					break;
				}
				if (!WaitReadable(fd)) {
					open = false;
					break;
				}
				const ssize_t n = recv(fd, chunk, sizeof(chunk), 0);
				if (n <= 0) {
					open = false;
					break;
				}
				buffer.append(chunk, static_cast<size_t>(n));
			}
			if (!open) {
				break;
			}
			request.connection = connection;
			{
				std::lock_guard<std::mutex> guard(mutex_);
				requests_.push_back(request);
			}
			const Reply reply = handler_(request);
			SleepMs(reply.delay_ms);
			if (reply.action == Reply::Action::kHang) {
				// Until the client gives up (EOF) or the server stops.
				while (WaitReadable(fd) && recv(fd, chunk, sizeof(chunk), 0) > 0) {
				}
				break;
			}
			if (reply.action == Reply::Action::kReset) {
				const linger hard = {1, 0};
				setsockopt(fd, SOL_SOCKET, SO_LINGER, &hard, sizeof(hard));
				break;
			}
			if (reply.action == Reply::Action::kClose) {
				break;
			}
			std::string head = "HTTP/1.1 " + std::to_string(reply.status) + " " + Reason(reply.status) + "\r\n";
			for (const auto &[name, value] : reply.headers) {
				head += name + ": " + value + "\r\n";
			}
			const bool close_after = Lower(request.Header("connection")) == "close";
			if (close_after) {
				head += "Connection: close\r\n";
			}
			if (reply.chunked) {
				head += "Transfer-Encoding: chunked\r\n\r\n";
				if (!SendAll(fd, head)) {
					break;
				}
				bool ok = true;
				for (size_t offset = 0; ok && offset < reply.body.size(); offset += 8192) {
					const std::string piece = reply.body.substr(offset, 8192);
					char size_line[32];
					std::snprintf(size_line, sizeof(size_line), "%zx\r\n", piece.size());
					ok = SendAll(fd, size_line + piece + "\r\n");
				}
				if (!ok || !SendAll(fd, "0\r\n\r\n")) {
					break;
				}
			} else {
				head += "Content-Length: " + std::to_string(reply.body.size()) + "\r\n\r\n";
				if (!SendAll(fd, head + reply.body)) {
					break;
				}
			}
			if (close_after) {
				break;
			}
		}
		close(fd);
	}

	Handler handler_;
	int listen_fd_ = -1;
	int port_ = 0;
	std::atomic<bool> stopping_{false};
	std::atomic<int> accepted_{0};
	std::thread acceptor_;
	mutable std::mutex mutex_;
	std::vector<std::thread> workers_;
	std::vector<ReceivedRequest> requests_;
};

} // namespace test
} // namespace pgfly
