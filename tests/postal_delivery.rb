# What Postal 3.3.6 records for a delivery through a relay, produced by Postal's own sending code.
#
# Runs Postal's SMTPSender, SMTPClient and its Net::SMTP patches (tests/vendor/postal-3.3.6, copied from tag 3.3.6; the
# patch makes an error's message the whole multi-line reply) with the
# net-smtp it pins in Gemfile.lock (0.4.0.1, tests/vendor/net-smtp-0.4.0.1) against the fake relay, with
# only Postal's surroundings stubbed: config, DNS, logger, the message. Then stores what
# MessageDequeuer::Base#log_sender_result (output&.strip) and MessageDB::Delivery.create (details and
# output cut to 250 characters) would. Reads [{id, port, ssl_mode, timeout}] as JSON on stdin, writes
# {id => {status, details, output}}; the scenarios run in parallel threads, each with its own
# open/read timeout (default POSTAL_SMTP_TIMEOUT).
#
#   ruby -I tests/vendor/net-smtp-0.4.0.1/lib tests/postal_delivery.rb < scenarios.json
require "net/smtp"
require "openssl"
require "json"
require "securerandom"

abort "net-smtp #{Net::SMTP::VERSION} loaded, Postal 3.3.6 pins 0.4.0.1" unless Net::SMTP::VERSION == "0.4.0.1"

RELAY_HOST = "smtp-relay.gmail.com"
TIMEOUT = Float(ENV.fetch("POSTAL_SMTP_TIMEOUT", "1"))

# ActiveSupport methods the vendored files call.
class Object
  def blank?
    respond_to?(:empty?) ? empty? : !self
  end

  def present?
    !blank?
  end
end

class Array
  def to_sentence
    size <= 2 ? join(" and ") : "#{self[0..-2].join(', ')}, and #{last}"
  end
end

# Postal's smtp_client timeouts, per scenario thread.
class ThreadTimeouts
  def open_timeout = Thread.current[:timeout] || TIMEOUT
  def read_timeout = Thread.current[:timeout] || TIMEOUT
end

class Stub
  def initialize(**methods)
    methods.each { |name, value| define_singleton_method(name) { |*| value } }
  end
end

module Postal
  Config = Stub.new(
    smtp_client: ThreadTimeouts.new,
    dns: Stub.new(helo_hostname: "postal.example.com", return_path_domain: "rp.postal.example.com"),
    postal: Stub.new(smtp_hostname: "postal.example.com", smtp_relays: nil, use_resent_sender_header?: false)
  )
  def self.logger
    Stub.new(create_tagged_logger: Stub.new(info: nil, error: nil))
  end
end

module DNSResolver
  # Postal resolves the relay itself (AAAA first); here it is the fake relay on 127.0.0.1.
  def self.local
    Stub.new(aaaa: [], a: ["127.0.0.1"])
  end
end

postal = File.expand_path("vendor/postal-3.3.6", __dir__)
%w[config/initializers/smtp_extensions app/senders/base_sender app/senders/send_result app/lib/smtp_client/ssl_modes app/lib/smtp_client/server
   app/lib/smtp_client/endpoint app/senders/smtp_sender].each { |f| require File.join(postal, f) }

def deliver(port, ssl_mode)
  message = Stub.new(id: 1, bounce: false, rcpt_to: "ops@example.com",
                     raw_message: "From: smoke-test@example.com\r\nTo: ops@example.com\r\nSubject: t\r\n\r\nhi\r\n",
                     server: Stub.new(id: 1, token: "srvtok"),
                     domain: Stub.new(return_path_status: "OK", return_path_domain: "psrp.example.com"))
  sender = SMTPSender.new("example.com", nil, servers: [SMTPClient::Server.new(RELAY_HOST, port: port, ssl_mode: ssl_mode)])
  sender.start
  result = sender.send_message(message)
  sender.finish
  output = result.output&.strip
  { status: result.type, details: result.details.to_s[0, 250], output: output && output[0, 250] }
end

scenarios = JSON.parse($stdin.read)
threads = scenarios.map do |s|
  Thread.new do
    Thread.current[:timeout] = s["timeout"]
    [s["id"], deliver(s["port"], s["ssl_mode"])]
  end
end
puts JSON.generate(threads.map(&:value).to_h)
