# frozen_string_literal: true

# Run by provision.sh inside Postal's runner container:
#   bundle exec rails runner /config/provision.rb < provision.json
# Finds or creates everything postal-gateway needs; safe to rerun; never prints a secret.
# Postal 3.3.6 behaviour relied on (app/models): Organization and Server are soft-deleted
# (HasSoftDestroy: deleted_at, `present`/`deleted` scopes, hard-deleted later by
# ActionDeletionsScheduledTask) and lookups by permalink still see them; a domain's DKIM key is
# used only once check_dns has set dkim_status OK (app/lib/dkim_header.rb).
require "json"
require "securerandom"

def say(message)
  puts "[postal-gateway:provision] #{message}"
end

# The stack's admin is the owner of the stack's organization (a marker Postal keeps): when
# adminEmail changes, that same account gets the new address, so the previous address cannot log
# in with the old password. If the new address already has its own account, it becomes the
# admin and the previous one loses admin rights and its password (Postal has no disabled state):
# promoted first, then demoted, in one transaction, so there is never a moment without an admin
# and a failure in between leaves the previous admin as it was.
def provision_admin(spec, organization)
  previous = organization&.owner
  user = User.find_by(email_address: spec.fetch("email"))
  if user.nil? && previous
    say "admin e-mail changed: #{previous.email_address} -> #{spec.fetch('email')} (same account)"
    previous.update!(email_address: spec.fetch("email"))
    user = previous
  elsif previous && user && user != previous
    User.transaction do
      user.update!(admin: true) unless user.admin?
      previous.update!(admin: false, password: SecureRandom.alphanumeric(48))
    end
    say "previous admin #{previous.email_address}: admin rights and password removed"
  end
  if user.nil?
    user = User.create!(email_address: spec.fetch("email"), first_name: spec.fetch("first_name"),
                        last_name: spec.fetch("last_name"), password: spec.fetch("password"),
                        admin: true, email_verified_at: Time.now)
    say "created admin user #{user.email_address}"
  end
  user.update!(admin: true) unless user.admin?
  unless user.authenticate(spec.fetch("password"))
    user.update!(password: spec.fetch("password"))
    say "reset the admin password of #{user.email_address} to the stack's adminPassword"
  end
  user
end

# A soft-deleted record with our permalink is brought back rather than used while deleted.
def restore(record, what)
  return record if record.nil? || record.deleted_at.nil?

  record.update!(deleted_at: nil)
  say "restored the deleted #{what} #{record.permalink}"
  record
end

# check_dns until SPF, DKIM and the return path are OK, within PG_DNS_WAIT_SECONDS (resolvers
# may not see new records yet). A domain still failing is reported by name; Postal re-checks it
# hourly (CheckAllDNSScheduledTask) and signs with its own key from then on.
# Each pass loads the domains afresh: a Domain keeps the resolver of its first lookup
# (`@resolver ||= DNSResolver.for_domain(name)`, app/models/domain.rb at 3.3.6), so reusing the
# objects would repeat a bad first lookup for the whole wait.
def check_domains(domains)
  deadline = Time.now + Integer(ENV.fetch("PG_DNS_WAIT_SECONDS", "600"))
  interval = Float(ENV.fetch("PG_DNS_CHECK_INTERVAL", "15"))
  ids = domains.map(&:id)
  checked = {}
  loop do
    ids.each do |id|
      domain = Domain.find(id)
      domain.check_dns
      checked[id] = domain
    end
    ids.reject! { |id| [checked[id].spf_status, checked[id].dkim_status, checked[id].return_path_status].all?("OK") }
    break if ids.empty? || Time.now >= deadline

    sleep(interval)
  end
  domains.each do |domain|
    domain = checked.fetch(domain.id)
    say "domain #{domain.name}: spf #{domain.spf_status}, dkim #{domain.dkim_status}, " \
        "return path #{domain.return_path_status}"
  end
  ids.each do |id|
    domain = checked.fetch(id)
    errors = %i[spf dkim return_path].filter_map { |c| domain.public_send(:"#{c}_error") }
    say "WARNING dns-pending #{domain.name}: #{errors.join('; ')} (Postal signs as rp.<hostname> until it passes)"
  end
end

class Suspended < StandardError; end

# Postal refuses every message of a suspended server or of a server whose organization is suspended
# (Server#suspended?: suspended_at or organization.suspended?, app/models/server.rb at 3.3.6; the
# SMTP server and the API check it). Suspension is an operator's decision: reported, never undone here.
def check_not_suspended(organization, server)
  [[organization, "organization #{organization.permalink}"],
   [server, "mail server #{organization.permalink}/#{server.permalink}"]].each do |record, what|
    next if record.suspended_at.nil?

    reason = record.suspension_reason.to_s.empty? ? "" : " (#{record.suspension_reason})"
    how = record.is_a?(Server) ? "Unsuspend in Postal's web UI (admin, the server's page)" : "No UI unsuspends it"
    raise Suspended, "#{what} is suspended since #{record.suspended_at}#{reason}: Postal refuses all its " \
                     "mail. #{how}; or `sudo postal console`: `#{record.class.name}.find(#{record.id})" \
                     ".update!(suspended_at: nil)`, then rerun"
  end
end

def provision(spec)
  org_spec = spec.fetch("organization")
  organization = restore(Organization.find_by(permalink: org_spec.fetch("permalink")), "organization")
  user = provision_admin(spec.fetch("admin"), organization)
  organization ||= Organization.create!(name: org_spec.fetch("name"), permalink: org_spec.fetch("permalink"),
                                        owner: user)
  organization.update!(owner: user) unless organization.owner == user
  say "organization #{organization.permalink}"

  server_spec = spec.fetch("server")
  server = restore(organization.servers.find_by(permalink: server_spec.fetch("permalink")), "mail server") ||
           organization.servers.create!(name: server_spec.fetch("name"), permalink: server_spec.fetch("permalink"),
                                        mode: server_spec.fetch("mode"))
  server.update!(mode: server_spec.fetch("mode")) unless server.mode == server_spec.fetch("mode")
  say "mail server #{organization.permalink}/#{server.permalink} (#{server.mode})"
  check_not_suspended(organization, server)

  # Credentials first: the DNS wait below may take minutes, and the stack's keys work without it.
  spec.fetch("credentials").each do |credential_spec|
    type, name, key = credential_spec.values_at("type", "name", "key")
    credential = server.credentials.find_by(type: type, name: name) ||
                 server.credentials.create!(type: type, name: name, key: key)
    # Postal replaces the key of a new API/SMTP credential with a random one and forbids changing
    # it through validations, so the stack's key is written to the column directly. (An SMTP-IP
    # credential's key is its address and is kept as given.)
    credential.update_column(:key, key) unless credential.key == key
    say "#{credential.type} credential #{credential.name}"
  end

  domains = spec.fetch("domains").map do |domain_spec|
    name = domain_spec.fetch("name")
    domain = server.domains.find_by(name: name) ||
             server.domains.create!(name: name, verification_method: "DNS", verified_at: Time.now)
    # Postal generates its own key on create; the stack's key and selector are what DNS publishes.
    wanted = { dkim_private_key: domain_spec.fetch("dkim_private_key"),
               dkim_identifier_string: domain_spec.fetch("dkim_selector") }
    domain.update!(wanted) unless wanted.all? { |column, value| domain.public_send(column) == value }
    domain.update!(verified_at: Time.now) if domain.verified_at.nil?
    domain
  end
  check_domains(domains)
  say "done"
end

# pulumi-command puts a failed step's output into its error: an exception's message may carry
# SQL with the keys being written, so only its class (and a validation's field messages) is shown.
begin
  provision(JSON.parse($stdin.read))
rescue Suspended => e
  warn "[postal-gateway:provision] ERROR: #{e.message}"
  exit 1
rescue StandardError => e
  detail = e.is_a?(ActiveRecord::RecordInvalid) ? ": #{e.record.errors.full_messages.join(', ')}" : ""
  warn "[postal-gateway:provision] ERROR: #{e.class}#{detail} (its message is withheld: it may hold SQL or keys)"
  exit 1
end
