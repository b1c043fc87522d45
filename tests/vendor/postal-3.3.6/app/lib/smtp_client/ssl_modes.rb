# frozen_string_literal: true

module SMTPClient
  module SSLModes

    AUTO = "Auto"
    STARTTLS = "STARTLS"
    TLS = "TLS"
    NONE = "None"

  end
end
