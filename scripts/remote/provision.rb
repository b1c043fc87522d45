# frozen_string_literal: true

# Run by provision.sh inside Postal's runner container:
#   bundle exec rails runner /config/provision.rb < provision.json
# Finds or creates everything postal-gateway needs; safe to rerun; never prints a secret.
require "json"

spec = JSON.parse($stdin.read)

def say(message)
  puts "[postal-gateway:provision] #{message}"
end

admin = spec.fetch("admin")
user = User.find_by(email_address: admin.fetch("email"))
if user.nil?
  user = User.create!(email_address: admin.fetch("email"), first_name: admin.fetch("first_name"),
                      last_name: admin.fetch("last_name"), password: admin.fetch("password"),
                      admin: true, email_verified_at: Time.now)
  say "created admin user #{user.email_address}"
else
  user.update!(admin: true) unless user.admin?
  unless user.authenticate(admin.fetch("password"))
    user.update!(password: admin.fetch("password"))
    say "reset the admin password of #{user.email_address} to the stack's adminPassword"
  end
end

org_spec = spec.fetch("organization")
organization = Organization.find_by(permalink: org_spec.fetch("permalink")) ||
               Organization.create!(name: org_spec.fetch("name"), permalink: org_spec.fetch("permalink"), owner: user)
say "organization #{organization.permalink}"

server_spec = spec.fetch("server")
server = organization.servers.find_by(permalink: server_spec.fetch("permalink")) ||
         organization.servers.create!(name: server_spec.fetch("name"), permalink: server_spec.fetch("permalink"),
                                      mode: server_spec.fetch("mode"))
server.update!(mode: server_spec.fetch("mode")) unless server.mode == server_spec.fetch("mode")
say "mail server #{organization.permalink}/#{server.permalink} (#{server.mode})"

spec.fetch("domains").each do |domain_spec|
  name = domain_spec.fetch("name")
  domain = server.domains.find_by(name: name) ||
           server.domains.create!(name: name, verification_method: "DNS", verified_at: Time.now)
  # Postal generates its own key on create; the stack's key and selector are what DNS publishes.
  wanted = { dkim_private_key: domain_spec.fetch("dkim_private_key"),
             dkim_identifier_string: domain_spec.fetch("dkim_selector") }
  domain.update!(wanted) unless wanted.all? { |column, value| domain.public_send(column) == value }
  domain.update!(verified_at: Time.now) if domain.verified_at.nil?
  domain.check_dns
  say "domain #{name}: spf #{domain.spf_status}, dkim #{domain.dkim_status}, " \
      "return path #{domain.return_path_status}"
end

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
say "done"
