# frozen_string_literal: true

# Postal's models as far as scripts/remote/provision.rb uses them, in memory, kept between runs in
# the Marshal file $FAKE_POSTAL_DB. Every write is logged to $FAKE_POSTAL_LOG. Postal's own quirks
# are kept: a new domain gets a generated DKIM key and selector, a new credential a random key that
# validations then forbid changing, passwords are only stored as digests, a Domain object keeps the
# resolver of its first lookup, and Organization/Server carry suspended_at. Like ActiveRecord, `find`
# returns a new object on the row and `transaction` rolls every row back when its block raises.
require "digest"
require "json"
require "securerandom"

# ActiveRecord's errors, as provision.rb sees them: a failed validation carries its record; a
# failed statement carries the SQL (with the values being written) in its message.
module ActiveRecord
  class RecordInvalid < StandardError
    attr_reader :record

    def initialize(record, messages)
      @record = record
      record.errors = Errors.new(messages)
      super("Validation failed: #{messages.join(', ')}")
    end
  end

  class StatementInvalid < StandardError; end

  Errors = Struct.new(:full_messages)
end

class FakeRecord
  DB = {}  # class name -> records; loaded at the end of this file, once every class exists
  at_exit do
    File.binwrite(ENV.fetch("FAKE_POSTAL_DB"), Marshal.dump(DB))
    File.write("#{ENV.fetch('FAKE_POSTAL_DB')}.json", JSON.generate(DB.transform_values do |rows|
      rows.map { |r| r.attributes.transform_values { |v| v.is_a?(FakeRecord) ? v.label : v.to_s } }
    end))
  end

  def self.log(line)
    File.open(ENV.fetch("FAKE_POSTAL_LOG"), "a") { |f| f.puts(line) }
  end

  def self.rows
    DB[name] ||= []
  end

  def self.where(conditions)
    rows.select { |r| conditions.all? { |k, v| r.attributes[k.to_sym] == v } }
  end

  def self.find_by(conditions)
    where(conditions).first
  end

  # ActiveRecord's find: a new object on the same row (instance variables such as a memoized
  # resolver are not carried over; the row's attributes are shared, so writes reach the row).
  def self.find(id)
    row = rows.find { |r| r.attributes[:id] == id } or raise "Couldn't find #{name} with 'id'=#{id}"
    record = allocate
    record.instance_variable_set(:@attributes, row.attributes)
    record
  end

  # ActiveRecord's transaction: an exception inside rolls every row back to how it was, then re-raises.
  def self.transaction
    saved = DB.values.flatten.to_h { |r| [r, r.attributes.dup] }
    yield
  rescue StandardError
    saved.each { |record, attributes| record.attributes.replace(attributes) }
    log("rollback")
    raise
  end

  def self.create!(attributes)
    record = new
    record.attributes[:id] = (rows.map { |r| r.attributes[:id].to_i }.max || 0) + 1
    attributes.each { |k, v| record.attributes[k.to_sym] = v }
    record.before_create
    record.check!
    rows << record
    log("create #{name} #{record.label}")
    record
  end

  # FAKE_POSTAL_FAIL=<Class>#<method>[(<columns>)]: that write (only the one changing exactly those
  # columns, when given) fails the way a database error does, with the statement and its values in
  # the message (Mysql2 through ActiveRecord::StatementInvalid).
  def self.maybe_fail(method, changes)
    wanted = ENV.fetch("FAKE_POSTAL_FAIL", "")
    return unless ["#{name}##{method}", "#{name}##{method}(#{changes.keys.map(&:to_s).sort.join(',')})"].include?(wanted)

    columns = changes.map { |k, v| "`#{k}` = '#{v}'" }.join(", ")
    raise ActiveRecord::StatementInvalid, "Mysql2::Error: Lock wait timeout exceeded: UPDATE `#{name.downcase}s` SET #{columns}"
  end

  attr_reader :attributes
  attr_accessor :errors

  def check!
    messages = validation_errors
    raise ActiveRecord::RecordInvalid.new(self, messages) unless messages.empty?
  end

  def initialize
    @attributes = {}
  end

  def before_create; end

  def validation_errors
    []
  end

  def update!(changes)
    self.class.maybe_fail("update!", changes)
    changes.each { |k, v| check_change!(k.to_sym, v) }
    before = attributes.dup
    changes.each { |k, v| attributes[k.to_sym] = v }
    begin
      check!
    rescue ActiveRecord::RecordInvalid
      @attributes = before
      raise
    end
    self.class.log("update #{self.class.name} #{label} #{changes.keys.sort.join(',')}")
    true
  end

  def check_change!(_key, _value); end

  def update_column(key, value)
    attributes[key.to_sym] = value
    self.class.log("update_column #{self.class.name} #{label} #{key}")
  end

  def method_missing(name, *args)
    attributes.key?(name) ? attributes[name] : super
  end

  def respond_to_missing?(name, include_private = false)
    attributes.key?(name) || super
  end
end

# `owner.servers`, `server.domains`, `server.credentials`.
class Association
  def initialize(klass, owner_key, owner)
    @klass, @owner_key, @owner = klass, owner_key, owner
  end

  def find_by(conditions)
    @klass.find_by(conditions.merge(@owner_key => @owner))
  end

  def create!(attributes)
    @klass.create!(attributes.merge(@owner_key => @owner))
  end
end

class User < FakeRecord
  # has_secure_password: only a digest is kept; minimum length 8.
  def self.digest(attributes)
    password = attributes.delete(:password) or return attributes
    raise "Password is too short (minimum is 8 characters)" if password.length < 8

    attributes.merge(password_digest: Digest::SHA256.hexdigest(password))
  end

  def self.create!(attributes)
    super(digest(attributes.dup))
  end

  def update!(changes)
    super(User.digest(changes.dup))
  end

  def validation_errors
    others = User.rows.reject { |u| u.equal?(self) }
    taken = others.any? { |u| u.email_address.casecmp?(attributes[:email_address].to_s) }
    taken ? ["Email address has already been taken"] : []
  end

  def authenticate(password)
    attributes[:password_digest] == Digest::SHA256.hexdigest(password) && self
  end

  def admin?
    attributes[:admin] == true
  end

  def label
    attributes[:email_address]
  end
end

# Organization and Server include HasSoftDestroy (app/models/concerns/has_soft_destroy.rb): the
# UI's delete sets deleted_at, the rows stay (find_by still returns them) until
# ActionDeletionsScheduledTask destroys them.
# Both also carry suspended_at and suspension_reason (db/schema.rb), read by provision.rb.
module SuspendableAndSoftDeleted
  def suspended_at = attributes[:suspended_at]
  def suspension_reason = attributes[:suspension_reason]
  def deleted_at = attributes[:deleted_at]
end

class Organization < FakeRecord
  include SuspendableAndSoftDeleted

  def validation_errors
    owner.is_a?(User) ? [] : ["Owner must exist"]
  end

  def servers
    Association.new(Server, :organization, self)
  end

  def label
    attributes[:permalink]
  end
end

class Server < FakeRecord
  include SuspendableAndSoftDeleted

  def validation_errors
    %w[Live Development].include?(mode) ? [] : ["Mode is not included in the list"]
  end

  def domains
    Association.new(Domain, :owner, self)
  end

  def credentials
    Association.new(Credential, :server, self)
  end

  def label
    attributes[:permalink]
  end
end

class Domain < FakeRecord
  def before_create
    attributes[:dkim_private_key] = "generated-#{SecureRandom.hex(4)}"  # Postal: OpenSSL::PKey::RSA.new(1024)
    attributes[:dkim_identifier_string] = SecureRandom.alphanumeric(6).upcase
  end

  # app/models/concerns/has_dns_checks.rb: each check sets <check>_status and <check>_error.
  # FAKE_POSTAL_DNS={"<domain>": n}: the records become visible at the n-th check of the domain
  # (-1: never; default 1). A Domain object keeps the resolver of its first lookup (`@resolver ||=
  # DNSResolver.for_domain(name)`, app/models/domain.rb at 3.3.6): a resolver whose first lookup
  # was bad stays bad for that object; a newly loaded object (find) gets a new one.
  RESOLVERS = {}.compare_by_identity  # object -> whether its resolver sees the records

  def check_dns
    visible_at = JSON.parse(ENV.fetch("FAKE_POSTAL_DNS", "{}")).fetch(name, 1)
    attributes[:checks] = attributes.fetch(:checks, 0) + 1
    sees = RESOLVERS.fetch(self) { RESOLVERS[self] = !visible_at.negative? && attributes[:checks] >= visible_at }
    unless sees
      dkim = "postal-#{attributes[:dkim_identifier_string]}._domainkey.#{name}"
      set_check(:spf, "Missing", "No SPF record exists for this domain")
      set_check(:dkim, "Missing", "No TXT records were returned for #{dkim}")
      set_check(:return_path, "Missing", "There is no return path record at psrp.#{name}")
    else
      %i[spf dkim return_path].each { |check| set_check(check, "OK", nil) }
    end
    attributes[:dns_checked_at] = Time.now
    self.class.log("check_dns #{label}")
    [spf_status, dkim_status].all?("OK")
  end

  def set_check(check, status, error)
    attributes[:"#{check}_status"] = status
    attributes[:"#{check}_error"] = error
  end

  def name
    attributes[:name]
  end

  def label
    attributes[:name]
  end
end

class Credential < FakeRecord
  def before_create
    return if type == "SMTP-IP"  # the key is the address

    attributes[:key] = SecureRandom.alphanumeric(24)  # Postal: before_validation :generate_key
  end

  def validation_errors
    return ["Type is not included in the list"] unless %w[SMTP API SMTP-IP].include?(type)
    return ["Key must be a valid IPv4 or IPv6 address"] if type == "SMTP-IP" && !attributes[:key].to_s.match?(/\A[\d.:a-f]+\z/)

    []
  end

  def check_change!(key, value)
    raise "Key cannot be changed" if key == :key && value != attributes[:key] && type != "SMTP-IP"
  end

  def type
    attributes[:type]
  end

  def label
    "#{attributes[:type]}/#{attributes[:name]}"
  end
end

FakeRecord::DB.replace(Marshal.load(File.binread(ENV.fetch("FAKE_POSTAL_DB")))) if File.exist?(ENV.fetch("FAKE_POSTAL_DB"))
