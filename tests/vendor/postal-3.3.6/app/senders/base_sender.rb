# frozen_string_literal: true

class BaseSender

  def start
  end

  def send_message(message)
  end

  def finish
  end

end
